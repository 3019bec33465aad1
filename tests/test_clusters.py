"""clusters/: cluster-launcher YAMLs, KubeRay manifests, recipes, DeepSpeed JSONs and `ppl-avvp submit`.

Fast checks (no cloud account, no Ray): every YAML/JSON parses; the cluster-launcher configs pass the
JSON schema shipped in the installed Ray and Ray's own config preparation; Kubernetes manifests have
their kinds' required fields; every recipe loads into RunConfig, agrees with its DeepSpeed JSON and
satisfies the shard arithmetic; `ppl-avvp submit --dry-run` prints the right `ray job submit`.

One integration test (marker ``ray``) starts a real local Ray cluster with `ray start`, submits a
recipe scaled down to tiny synthetic data through `ppl-avvp submit` and once more with a bare
`ray job submit --working-dir .`, checks both jobs SUCCEEDED and their MLflow runs exist, and stops
exactly the processes of that cluster. Other Ray users on the machine are kept out with the
``/tmp/ppl-ray.lock`` convention (flock).
"""
from __future__ import annotations

import copy
import glob
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import TINY_MODEL
from distributed.cli import run_command
from distributed.common.config import load_config
from distributed.runtime.engine import deepspeed_config
from local_ray_cluster import _job_status, _wait_for_job, local_cluster
from tune import submit

REPO = Path(__file__).resolve().parents[1]
CLUSTERS = REPO / "clusters"
RECIPES = CLUSTERS / "recipes"
RUN_RECIPES = ["llp_1gpu.yaml", "llp_8gpu.yaml", "llp_4x8gpu.yaml", "audioset_4x8gpu.yaml"]
LAUNCHER_CONFIGS = ["aws.yaml", "gcp.yaml"]
SUBMIT_SETTINGS = yaml.safe_load((RECIPES / "submit.yaml").read_text())


def _ray_version() -> str:
    import ray

    return ray.__version__


def _torch_pin() -> str:
    import torch

    return torch.__version__.split("+")[0]


def _yaml_docs(path: Path) -> list:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


# ------------------------------------------------------------------------------------------------
# Everything parses
# ------------------------------------------------------------------------------------------------

def test_every_yaml_and_json_under_clusters_parses():
    files = sorted(glob.glob(str(CLUSTERS / "**" / "*.*"), recursive=True))
    parsed = 0
    for name in files:
        path = Path(name)
        if path.suffix in (".yaml", ".yml"):
            assert _yaml_docs(path), f"{path}: empty YAML"
            parsed += 1
        elif path.suffix == ".json":
            assert isinstance(json.loads(path.read_text()), dict), path
            parsed += 1
        else:
            assert path.suffix == ".md", f"{path}: clusters/ holds YAML, JSON and Markdown only"
    assert parsed >= 15


# ------------------------------------------------------------------------------------------------
# Ray cluster launcher
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_cluster_launcher_config_passes_rays_schema_and_config_preparation(name):
    import jsonschema
    import ray
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    config = yaml.safe_load((CLUSTERS / name).read_text())
    jsonschema.validate(config, schema)
    # what `ray up` does before it talks to the cloud: merge provider defaults, then validate
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)

    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head node is CPU-only"
    gpu_groups = [t for n, t in types.items() if n != config["head_node_type"]]
    assert len(gpu_groups) == 1
    group = gpu_groups[0]
    assert group["resources"]["GPU"] == 8 and group["min_workers"] == 0 and group["max_workers"] >= 4
    assert config["max_workers"] >= group["max_workers"]
    node = group["node_config"]
    assert node.get("InstanceType") == "p4d.24xlarge" or node.get("machineType") == "a2-highgpu-8g"

    # the image's Ray is the project's Ray; the setup installs a CUDA torch pinned like the CPU one
    assert config["docker"]["image"] == f"rayproject/ray:{_ray_version()}-py311-gpu"
    assert any("/mnt/shared:/mnt/shared" in opt for opt in config["docker"]["run_options"])
    setup = " && ".join(config["setup_commands"])
    assert re.search(rf'torch=={re.escape(_torch_pin())}"? --index-url https://download\.pytorch\.org/whl/cu\d+', setup)
    assert "pip install -q -e ~/ppl-avvp" in setup
    assert setup.index("torch==") < setup.index("-e ~/ppl-avvp"), "torch first, or pip resolves another one"
    assert config["file_mounts"] == {"~/ppl-avvp": "."}
    assert "**/.venv" in config["rsync_exclude"]
    assert any("mount" in cmd and "/mnt/shared" in cmd for cmd in config["initialization_commands"])

    head_start = " ".join(config["head_start_ray_commands"])
    assert "ray start --head" in head_start and "--port=6379" in head_start
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head_start
    assert "--dashboard-host=127.0.0.1" in head_start, "jobs API only through the SSH tunnel"
    assert "ray start --address=$RAY_HEAD_IP:6379" in " ".join(config["worker_start_ray_commands"])


# ------------------------------------------------------------------------------------------------
# Kubernetes manifests
# ------------------------------------------------------------------------------------------------

def _manifests() -> list[tuple[Path, dict]]:
    out = []
    for path in sorted((CLUSTERS / "kuberay").glob("*.yaml")):
        out += [(path, doc) for doc in _yaml_docs(path)]
    return out


def _check_pod_template(where: str, template: dict, gpus: int | None = None) -> dict:
    containers = template["spec"]["containers"]
    assert containers, f"{where}: no containers"
    for c in containers:
        assert c.get("name") and c.get("image"), f"{where}: container needs name and image"
    main = containers[0]
    if gpus is not None:
        limits = main["resources"]["limits"]
        assert int(limits.get("nvidia.com/gpu", 0)) == gpus, f"{where}: expected {gpus} GPUs"
    return main


def _check_ray_cluster_spec(where: str, spec: dict) -> None:
    assert spec["rayVersion"] == _ray_version(), f"{where}: rayVersion"
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    head_container = _check_pod_template(f"{where}.headGroupSpec", head["template"], gpus=None)
    assert "nvidia.com/gpu" not in head_container["resources"].get("limits", {}), f"{where}: CPU head"
    ports = {p["containerPort"] for p in head_container["ports"]}
    assert {6379, 8265} <= ports
    workers = spec["workerGroupSpecs"]
    assert workers, f"{where}: no worker group"
    for group in workers:
        assert group["groupName"] and isinstance(group["rayStartParams"], dict)
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        container = _check_pod_template(f"{where}.{group['groupName']}", group["template"], gpus=8)
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert "/mnt/shared" in mounts and "/dev/shm" in mounts


def test_kubernetes_manifests_have_the_required_fields_of_their_kinds():
    kinds: dict[str, int] = {}
    for path, doc in _manifests():
        where = f"{path.name}:{doc.get('kind')}"
        assert doc.get("apiVersion") and doc.get("kind") and doc["metadata"].get("name"), where
        kind = doc["kind"]
        kinds[kind] = kinds.get(kind, 0) + 1
        if kind == "RayCluster":
            assert doc["apiVersion"] == "ray.io/v1"
            _check_ray_cluster_spec(where, doc["spec"])
            assert doc["spec"]["enableInTreeAutoscaling"] is True
        elif kind == "RayJob":
            spec = doc["spec"]
            assert doc["apiVersion"] == "ray.io/v1"
            assert spec["shutdownAfterJobFinishes"] is True
            assert spec["entrypoint"].startswith("python -m ")
            runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
            assert runtime_env["working_dir"].endswith(".zip")
            assert runtime_env["env_vars"]["MLFLOW_TRACKING_URI"].startswith("http://mlflow.")
            _check_ray_cluster_spec(where, spec["rayClusterSpec"])
        elif kind == "Deployment":
            spec = doc["spec"]
            labels = spec["template"]["metadata"]["labels"]
            assert spec["selector"]["matchLabels"].items() <= labels.items(), where
            _check_pod_template(where, spec["template"])
        elif kind == "Service":
            assert doc["spec"]["selector"] and doc["spec"]["ports"], where
        elif kind == "PersistentVolumeClaim":
            assert doc["spec"]["accessModes"] == ["ReadWriteMany"], f"{where}: every Ray pod mounts it"
        else:
            assert kind == "ServiceAccount", f"{where}: unexpected kind"
    assert kinds == {"RayCluster": 1, "RayJob": 2, "Deployment": 1, "Service": 1, "PersistentVolumeClaim": 1,
                     "ServiceAccount": 1}


def test_mlflow_service_selects_its_deployment_and_the_jobs_point_at_it():
    docs = {d["kind"]: d for _, d in _manifests() if d["kind"] in ("Deployment", "Service")}
    deployment, service = docs["Deployment"], docs["Service"]
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    port = service["spec"]["ports"][0]["port"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-backend"
    command = " ".join(container["args"])
    assert "--serve-artifacts" in command and "--allowed-hosts" in command
    expected = f"http://{service['metadata']['name']}.ppl-avvp.svc.cluster.local:{port}"
    for path, doc in _manifests():
        if doc["kind"] == "RayJob":
            assert yaml.safe_load(doc["spec"]["runtimeEnvYAML"])["env_vars"]["MLFLOW_TRACKING_URI"] == expected
    host = expected.split("//")[1].split(":")[0]
    assert f"{host}:*" in command, "the server must accept the Host header the jobs send"


@pytest.mark.parametrize("manifest", ["rayjob-train.yaml", "rayjob-sweep.yaml"])
def test_rayjob_entrypoint_runs_a_recipe_that_validates(manifest, monkeypatch):
    doc = _yaml_docs(CLUSTERS / "kuberay" / manifest)[0]
    argv = shlex.split(doc["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "tune.sweep" if "sweep" in manifest else "distributed.train"]
    recipe = argv[argv.index("--config") + 1]
    assert (REPO / recipe).is_file()
    monkeypatch.chdir(REPO)
    assert run_command(submit.main, [recipe, "--dry-run"]) == 0


# ------------------------------------------------------------------------------------------------
# Recipes and DeepSpeed JSONs
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", RUN_RECIPES)
def test_recipe_loads_into_run_config_and_agrees_with_its_deepspeed_json(name, monkeypatch):
    monkeypatch.chdir(REPO)          # recipes name their DeepSpeed JSON relative to the repo root
    cfg = load_config(RECIPES / name)
    d = cfg.distributed
    assert d.use_gpu and d.engine == "deepspeed" and d.precision == "bf16"
    assert d.num_workers in (1, 8, 32)
    ds_path = REPO / d.deepspeed_config
    raw = json.loads(ds_path.read_text())
    assert raw["zero_optimization"]["stage"] == d.zero_stage and raw["bf16"]["enabled"] is True
    resolved = deepspeed_config(cfg)         # raises when the JSON contradicts the config
    assert resolved["train_micro_batch_size_per_gpu"] == cfg.data.batch_size
    assert resolved["zero_optimization"]["stage"] == d.zero_stage and resolved["bf16"]["enabled"]
    # cluster runs: data and run folders on the shared mount every node sees
    assert cfg.data.shards.startswith("/mnt/shared/") and cfg.output_dir.startswith("/mnt/shared/")
    assert cfg.data.loader_workers < d.cpus_per_worker
    assert min(d.num_workers, 8) * d.cpus_per_worker <= 96 - 8, "a node's workers fit its 96 vCPUs, with room"
    if name.startswith("audioset"):
        assert cfg.model.num_classes == 527
    else:
        assert cfg.model.num_classes == 25


@pytest.mark.parametrize("name", RUN_RECIPES)
def test_recipe_loads_with_its_data_paths_overridden(name, tiny_llp, tmp_path, monkeypatch):
    """The same recipe, pointed at local LLP folders and a CPU (what a smoke run overrides)."""
    monkeypatch.chdir(REPO)
    cfg = load_config(RECIPES / name, [
        "data.shards=", f"data.annotations={tiny_llp / 'annotations'}", f"data.features={tiny_llp / 'features'}",
        f"output_dir={tmp_path / 'run'}", "distributed.use_gpu=false", "distributed.precision=fp32",
        "distributed.deepspeed_config=", "distributed.num_workers=1", "distributed.cpus_per_worker=1"])
    assert cfg.data.shards == "" and Path(cfg.data.annotations).is_dir()
    deepspeed_config(cfg)


@pytest.mark.parametrize("name", RUN_RECIPES)
def test_recipe_batch_and_shard_arithmetic(name):
    cfg = load_config(RECIPES / name)
    shards = SUBMIT_SETTINGS["recipes"][name]["train_shards"]
    readers = cfg.world_size * max(1, cfg.data.loader_workers)
    assert cfg.data.resample or shards >= readers, f"{name}: {shards} shards < {readers} readers"
    # the comment in the recipe states the same assumption as submit.yaml
    text = (RECIPES / name).read_text()
    stated = re.search(r"Shard count assumption: train = (\d+) shards", text)
    assert stated and int(stated.group(1)) == shards
    assert re.search(rf"{cfg.world_size} ranks? x {cfg.data.loader_workers} loader workers = {readers} readers", text)
    train_videos = 10_000 if name.startswith("llp") else 2_000_000
    steps = train_videos // (cfg.world_size * cfg.data.batch_size)
    assert steps >= 10, f"{name}: {steps} steps per epoch"
    assert train_videos // shards >= cfg.data.batch_size, "a shard holds at least one batch"


def test_every_deepspeed_json_is_used_by_a_recipe():
    used = {load_config(RECIPES / n).distributed.deepspeed_config for n in RUN_RECIPES}
    on_disk = {f"clusters/deepspeed/{p.name}" for p in (CLUSTERS / "deepspeed").glob("*.json")}
    assert on_disk == used


def test_sweep_file_is_the_seeds_tau_by_ema_grid_and_every_trial_validates(monkeypatch):
    from tune.spaces import TOP_LEVEL_KEYS, load_sweep

    raw = yaml.safe_load((RECIPES / "sweep_tau_ema.yaml").read_text())
    assert set(raw) <= set(TOP_LEVEL_KEYS)
    monkeypatch.chdir(REPO)
    spec = load_sweep("clusters/recipes/sweep_tau_ema.yaml", check_data=False)
    assert [(d.key, d.kind, d.values) for d in spec.dimensions] == [
        ("ppl.tau", "grid", [0.05, 0.1, 0.2, 0.3]), ("ppl.ema_decay", "grid", [0.999, "none"])]
    assert spec.num_trials == 24 and spec.metric == "val_seg_type" and spec.mode == "max"
    assert spec.workers == 1 and spec.max_concurrent_trials == 8
    assert str(spec.storage).startswith("/mnt/shared/")


def test_submit_settings_name_existing_recipes_only():
    assert set(SUBMIT_SETTINGS) == {"defaults", "recipes"}
    for name, entry in SUBMIT_SETTINGS["recipes"].items():
        assert (RECIPES / name).is_file(), name
        assert set(entry) <= submit.SETTINGS_KEYS
    excludes = SUBMIT_SETTINGS["defaults"]["excludes"]
    for pattern in ("runs/", "demo/", ".venv/", "*.tar", "mlruns/", ".cache/"):
        assert pattern in excludes
    assert SUBMIT_SETTINGS["defaults"]["forward_env"] == ["MLFLOW_TRACKING_URI"]


# ------------------------------------------------------------------------------------------------
# ppl-avvp submit --dry-run
# ------------------------------------------------------------------------------------------------

def _split_command(stdout: str) -> tuple[list[str], dict, list[str]]:
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert len(lines) == 1, stdout
    argv = shlex.split(lines[0])
    sep = argv.index("--")
    runtime_env = json.loads(argv[argv.index("--runtime-env-json") + 1])
    return argv[:sep], runtime_env, argv[sep + 1:]


def test_submit_dry_run_prints_the_ray_job_submit_command(tmp_path):
    """Through the console entry point, as a user runs it: validation notes on stderr, the command on stdout."""
    env = dict(os.environ, MLFLOW_TRACKING_URI="http://mlflow.example:5000", MLFLOW_TRACKING_PASSWORD="secret")
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-m", "distributed.cli", "submit", "clusters/recipes/llp_8gpu.yaml",
                           "--address", "http://127.0.0.1:8265", "--dry-run", "ppl.tau=0.2", "--env", "FOO=bar",
                           "tracking.run_name=my run"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    ray_argv, runtime_env, entrypoint = _split_command(proc.stdout)
    assert ray_argv[0] == str(Path(sys.executable).parent / "ray")
    assert ray_argv[1:3] == ["job", "submit"]
    assert ray_argv[ray_argv.index("--address") + 1] == "http://127.0.0.1:8265"
    assert "--no-wait" not in ray_argv
    assert entrypoint == ["python", "-m", "distributed.train", "--config", "clusters/recipes/llp_8gpu.yaml",
                          "ppl.tau=0.2", "tracking.run_name=my run"]
    assert runtime_env["working_dir"] == str(REPO)
    for pattern in ("runs/", "demo/", ".venv/", "*.tar", "mlruns/", ".cache/"):
        assert pattern in runtime_env["excludes"]
    assert runtime_env["env_vars"]["MLFLOW_TRACKING_URI"] == "http://mlflow.example:5000"
    assert runtime_env["env_vars"]["FOO"] == "bar" and runtime_env["env_vars"]["NCCL_DEBUG"] == "WARN"
    assert "MLFLOW_TRACKING_PASSWORD" not in runtime_env["env_vars"], "secrets stay out of runtime_env"
    assert "recipe ok: llp-8gpu: 8 worker(s) x batch 16 (global 128)" in proc.stderr
    assert "assumed 128" in proc.stderr


def test_submit_dry_run_of_the_sweep_runs_tune_sweep(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert run_command(submit.main, ["clusters/recipes/sweep_tau_ema.yaml", "--dry-run", "--no-wait",
                                     "--submission-id", "sweep-1", "optim.epochs=4"]) == 0
    out = capsys.readouterr()
    ray_argv, runtime_env, entrypoint = _split_command(out.out)
    assert entrypoint == ["python", "-m", "tune.sweep", "--config", "clusters/recipes/sweep_tau_ema.yaml",
                          "optim.epochs=4"]
    assert "--no-wait" in ray_argv and ray_argv[ray_argv.index("--submission-id") + 1] == "sweep-1"
    assert "MLFLOW_TRACKING_URI" not in runtime_env["env_vars"]
    assert "sweep ok: sweep-tau-ema: 8 point(s) x 3 seed(s) = 24 trials" in out.err


def test_submit_reads_the_shard_manifest_when_it_is_reachable(tiny_shards, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    n_shards = json.loads((tiny_shards / "train" / "manifest.json").read_text())["num_shards"]   # 8
    base = ["clusters/recipes/llp_8gpu.yaml", "--dry-run", f"data.shards={tiny_shards}",
            "distributed.num_workers=2", "data.batch_size=8"]
    assert run_command(submit.main, base + ["data.loader_workers=2"]) == 0
    assert f"train shards: {n_shards} shards, 96 videos for 2 rank(s) x 2 reader(s) = 4; 6 steps/epoch" in capsys.readouterr().err
    # more readers than shards: the reader's own error, before anything reaches a cluster
    assert run_command(submit.main, base + ["data.loader_workers=5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(r"\b10\b", err), err      # 2 ranks x 5 workers = 10 readers
    assert run_command(submit.main, base + ["data.loader_workers=5", "data.resample=true"]) == 0


@pytest.mark.parametrize("args, message", [
    (["clusters/recipes/audioset_4x8gpu.yaml", "data.shards=s3://bucket/audioset/shards"],
     "data.shards: s3://bucket/audioset/shards is a URL"),
    (["clusters/recipes/llp_4x8gpu.yaml", "data.loader_workers=8"],
     "32 rank(s) x 8 loader worker(s) = 256 readers, but the recipe assumes 128 train shards"),
    (["clusters/recipes/llp_8gpu.yaml", "distributed.zero_stage=2"],
     "sets zero_optimization.stage=1 but distributed.zero_stage=2"),
    (["clusters/recipes/llp_8gpu.yaml", "distributed.precision=fp32"], "sets bf16.enabled=True but distributed.precision=fp32"),
    (["clusters/recipes/llp_8gpu.yaml", "data.batchsize=8"], "unknown config key 'data.batchsize' (did you mean 'data.batch_size'?)"),
    (["clusters/recipes/llp_8gpu.yaml", "not-an-override"], "override 'not-an-override': expected key=value"),
    (["clusters/recipes/llp_8gpu.yaml", "distributed.zero_stage=3"], "distributed.zero_stage: must be 0, 1 or 2"),
    (["clusters/recipes/missing.yaml"], "recipe file not found"),
    (["/etc/hostname"], "not inside the working_dir"),
    (["clusters/recipes/llp_8gpu.yaml", "--env", "BAD"], "--env 'BAD': expected KEY=VALUE"),
])
def test_submit_refuses_bad_recipes_with_one_line_and_exit_2(args, message, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert run_command(submit.main, args + ["--dry-run"], prog="ppl-avvp submit") == 2
    out = capsys.readouterr()
    assert out.out == ""                                     # nothing printed as a command
    assert out.err.startswith("ppl-avvp submit: error: ") and out.err.count("\n") == 1
    assert message in out.err


def test_submit_settings_file_is_checked(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    bad = tmp_path / "submit.yaml"
    bad.write_text("defaults:\n  entrypoints: distributed.train\n")
    assert run_command(submit.main, ["clusters/recipes/llp_1gpu.yaml", "--settings", str(bad), "--dry-run"]) == 2
    assert "unknown submit setting 'entrypoints'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# Integration: a real local cluster (tests/local_ray_cluster.py), `ppl-avvp submit` and a bare `ray job submit`
# ------------------------------------------------------------------------------------------------

@pytest.mark.ray
def test_submit_and_ray_job_submit_round_trip_on_a_local_cluster(tiny_llp, tmp_path):
    import mlflow

    ray = str(Path(sys.executable).parent / "ray")
    # llp_1gpu.yaml scaled down: local data, CPU, one tiny epoch, plain torch engine
    scaled = ["data.shards=", f"data.annotations={tiny_llp / 'annotations'}", f"data.features={tiny_llp / 'features'}",
              "distributed.use_gpu=false", "distributed.precision=fp32", "distributed.engine=torch",
              "distributed.zero_stage=0", "distributed.deepspeed_config=", "distributed.cpus_per_worker=1",
              "distributed.max_failures=0", "data.loader_workers=0", "optim.epochs=1", *TINY_MODEL,
              "tracking.experiment=test-clusters"]

    def per_job(name: str) -> list[str]:   # separate stores: two fresh sqlite files never race on schema creation
        return [f"output_dir={tmp_path / 'runs' / name}", f"tracking.run_name={name}",
                f"tracking.tracking_uri=sqlite:///{tmp_path / f'mlflow-{name}.db'}"]

    with local_cluster() as (address, env):
        job_env = {"TORCH_EXTENSIONS_DIR": env["TORCH_EXTENSIONS_DIR"], "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}
        # 1. a bare `ray job submit --working-dir .` of the recipe (what the README shows), not waited for ...
        runtime_env = {"env_vars": job_env, "excludes": ["runs/", "demo/", ".cache/", "mlruns/"]}
        for attempt in range(5):   # the head's job agent may still be registering right after `ray start`
            bare = subprocess.run(
                [ray, "job", "submit", "--address", address, "--submission-id", "clusters-bare", "--no-wait",
                 "--working-dir", ".", "--runtime-env-json", json.dumps(runtime_env), "--",
                 "python", "-m", "distributed.train", "--config", "clusters/recipes/llp_1gpu.yaml", *scaled,
                 *per_job("bare")],
                cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
            if "No available agent" not in bare.stdout + bare.stderr:
                break
            time.sleep(3)
        assert bare.returncode == 0, bare.stdout[-3000:] + bare.stderr[-3000:]
        # 2. ... while the wrapper validates, builds the runtime_env, runs `ray job submit` and blocks
        wrapped = subprocess.run(
            [sys.executable, "-m", "distributed.cli", "submit", "clusters/recipes/llp_1gpu.yaml", "--address", address,
             "--submission-id", "clusters-wrapped", *[a for k, v in job_env.items() for a in ("--env", f"{k}={v}")],
             *scaled, *per_job("wrapped")],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert wrapped.returncode == 0, wrapped.stdout[-3000:] + wrapped.stderr[-3000:]
        assert wrapped.stdout.splitlines()[0].startswith(f"{ray} job submit --address {address} ")
        assert _job_status(ray, address, "clusters-wrapped", env) == "SUCCEEDED"
        status = _wait_for_job(ray, address, "clusters-bare", env)
        if status != "SUCCEEDED":
            logs = subprocess.run([ray, "job", "logs", "clusters-bare", "--address", address], env=env,
                                  capture_output=True, text=True, timeout=60)
            pytest.fail(f"bare job {status}:\n{logs.stdout[-3000:]}")

    for name in ("wrapped", "bare"):
        client = mlflow.MlflowClient(f"sqlite:///{tmp_path / f'mlflow-{name}.db'}")
        experiment = client.get_experiment_by_name("test-clusters")
        runs = client.search_runs([experiment.experiment_id], f"attributes.run_name = '{name}'")
        assert len(runs) == 1 and runs[0].info.status == "FINISHED", name
        assert runs[0].data.params["name"] == "llp-1gpu" and runs[0].data.params["optim.epochs"] == "1"
        assert "val_seg_type" in runs[0].data.metrics and "test_seg_type" in runs[0].data.metrics
        assert (tmp_path / "runs" / name / "results.json").is_file()
