"""End to end in one process (no Ray): train -> best checkpoint -> evaluate/predict, DeepSpeed ZeRO 0-2,
exact local resume, and the bad inputs a user hits first."""
import json
import subprocess
import sys

import pytest
import torch

from conftest import TINY_MODEL
from distributed.cli import main as cli
from distributed.common.config import load_config
from distributed.train import train


def tiny_config(data_overrides, out, *extra):
    return load_config("ppl", [*data_overrides, f"output_dir={out}", "distributed.num_workers=0",
                               "distributed.engine=torch", "optim.epochs=2", "data.batch_size=8",
                               "ppl.warmup_epochs=1", *TINY_MODEL, *extra])


@pytest.fixture(scope="module")
def trained(tiny_llp, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "ppl"
    cfg = tiny_config([f"data.annotations={tiny_llp / 'annotations'}", f"data.features={tiny_llp / 'features'}"],
                      out, "tracking.mlflow=false")
    return out, train(cfg, mlflow=False)


def test_ppl_training_writes_ten_test_numbers_and_history(trained):
    out, results = trained
    assert set(results["test"]) == {"seg_a", "seg_v", "seg_av", "seg_type", "seg_event",
                                    "evt_a", "evt_v", "evt_av", "evt_type", "evt_event"}
    assert all(0.0 <= v <= 100.0 for v in results["test"].values())
    assert [h["epoch"] for h in results["history"]] == [1, 2]
    # pseudo-labels are off in warm-up (epoch 1) and on afterwards; their quality is tracked
    assert results["history"][0]["loss_pseudo_label"] == 0.0 < results["history"][1]["loss_pseudo_label"]
    assert "pl_f1" in results["history"][1] and "pl_model_f1" in results["history"][1]
    assert (out / "best_model.pt").exists() and (out / "final_model.pt").exists()
    assert json.loads((out / "results.json").read_text()) == results


def test_evaluate_checkpoint_reproduces_training_test_numbers(trained, tiny_llp, tmp_path):
    out, results = trained
    scores = tmp_path / "scores.json"
    code = cli(["evaluate", "--checkpoint", str(out / "best_model.pt"), "--features", str(tiny_llp / "features"),
                "--annotations", str(tiny_llp / "annotations"), "--split", "test", "--json", str(scores)])
    assert code == 0
    assert json.loads(scores.read_text()) == results["test"]


def test_predict_writes_events_and_timelines(trained, tiny_llp, tmp_path):
    out, _ = trained
    code = cli(["predict", "--checkpoint", str(out / "best_model.pt"), "--features", str(tiny_llp / "features"),
                "--annotations", str(tiny_llp / "annotations"), "--split", "val", "--out", str(tmp_path),
                "--pictures", "2"])
    assert code == 0
    events = json.loads((tmp_path / "events.json").read_text())["videos"]
    assert len(events) == 24
    for video_events in events.values():
        for e in video_events:
            assert e["modality"] in ("audio", "visual", "audio_visual") and 0 <= e["onset"] < e["offset"] <= 10
    pictures = sorted((tmp_path / "timelines").glob("*.png"))
    assert len(pictures) == 2 and pictures[0].read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_deepspeed_zero_stages_train_from_shards(tiny_shards, tmp_path, stage):
    cfg = tiny_config([f"data.shards={tiny_shards}"], tmp_path / f"zero{stage}", "distributed.engine=deepspeed",
                      f"distributed.zero_stage={stage}", "optim.epochs=1", "tracking.mlflow=false")
    results = train(cfg, mlflow=False)
    assert results["history"][0]["loss_total"] > 0 and len(results["test"]) == 10


def test_fused_adamw_is_the_default_and_takes_the_same_steps_as_torch_default(tmp_path):
    from distributed.runtime.engine import TorchEngine
    from model.network import AudioVisualParser

    def three_steps(*extra):
        cfg = tiny_config(["data.shards=unused"], tmp_path / "r", *extra)
        torch.manual_seed(0)
        engine = TorchEngine(cfg, AudioVisualParser(cfg.model), torch.device("cpu"))
        initial = {k: v.clone() for k, v in engine.module.state_dict().items()}
        g = torch.Generator().manual_seed(1)
        for _ in range(3):   # the same gradients for both (a loss would leave some of them float noise)
            for parameter in engine.module.parameters():
                parameter.grad = torch.randn(parameter.shape, generator=g)
            engine.step()
        return engine.optimizer.param_groups[0]["fused"], initial, engine.module.state_dict()

    fused, initial, fused_weights = three_steps()
    default, _, default_weights = three_steps("optim.fused=false")
    assert fused is True and not default
    for key, value in fused_weights.items():
        assert not torch.equal(value, initial[key]), key
        torch.testing.assert_close(value, default_weights[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("engine_name, setting", [("torch", ()), ("deepspeed", ()),
                                                  ("deepspeed", ("distributed.zero_stage=1", "distributed.precision=bf16"))])
def test_resume_keeps_the_configured_adamw_kernel_not_the_checkpoints(tmp_path, engine_name, setting):
    # torch's load_state_dict restores the saved group settings, `fused` included: a checkpoint written with
    # optim.fused=false (as every earlier round's were) must not switch a fused run back, nor the reverse
    from distributed.runtime.engine import DeepSpeedEngine, TorchEngine, ensure_process_group, innermost_optimizer
    from model.network import AudioVisualParser

    if engine_name == "deepspeed":
        ensure_process_group()   # as train() does for a run in this process

    def engine_with(*extra):
        cfg = tiny_config(["data.shards=unused"], tmp_path / "r", f"distributed.engine={engine_name}", *setting,
                          *extra)
        torch.manual_seed(0)
        kind = TorchEngine if engine_name == "torch" else DeepSpeedEngine
        engine = kind(cfg, AudioVisualParser(cfg.model), torch.device("cpu"))
        one_step(engine)
        return engine

    def one_step(engine):   # through the engine's backward: ZeRO reduces the gradients its own way
        g = torch.Generator().manual_seed(1)
        inputs = (torch.randn(2, 10, 128, generator=g), torch.randn(2, 10, 2048, generator=g),
                  torch.randn(2, 10, 512, generator=g))
        engine.backward(engine(*inputs).global_prob.sum())
        engine.step()

    for saved_fused, resumed_fused in ((False, True), (True, False)):
        folder = tmp_path / f"ckpt-{saved_fused}"
        folder.mkdir()
        engine_with(f"optim.fused={str(saved_fused).lower()}").save(folder, rank=0)
        resumed = engine_with(f"optim.fused={str(resumed_fused).lower()}")
        resumed.load(folder)
        optimizer = innermost_optimizer(resumed.optimizer)
        assert isinstance(optimizer, torch.optim.AdamW)
        assert all(bool(group["fused"]) is resumed_fused for group in optimizer.param_groups)
        steps = [state["step"] for state in optimizer.state.values()]
        assert steps and all(step.dtype == torch.float32 and float(step) == 1.0 for step in steps)
        one_step(resumed)    # the kernel accepts the restored state
        assert all(float(state["step"]) == 2.0 for state in optimizer.state.values())


def test_local_resume_continues_exactly(tiny_llp, tmp_path):
    data = [f"data.annotations={tiny_llp / 'annotations'}", f"data.features={tiny_llp / 'features'}"]
    full = tiny_config(data, tmp_path / "full", "deterministic=true", "tracking.mlflow=false")
    train(full, mlflow=False)
    # same run stopped after epoch 1, then restarted with 2 epochs: picks up the epoch-1 checkpoint
    half = tiny_config(data, tmp_path / "half", "deterministic=true", "tracking.mlflow=false", "optim.epochs=1")
    train(half, mlflow=False)
    resumed = tiny_config(data, tmp_path / "half", "deterministic=true", "tracking.mlflow=false")
    train(resumed, mlflow=False, resume=True)
    a = torch.load(tmp_path / "full" / "final_model.pt", weights_only=True)
    b = torch.load(tmp_path / "half" / "final_model.pt", weights_only=True)
    for part in ("network", "momentum", "bank"):
        for key in a[part]:
            x, y = a[part][key], b[part][key]   # tensors, and the EMA's _extra_state (its update count)
            assert (torch.equal(x, y) if torch.is_tensor(x) else x == y), f"{part}.{key}"


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "distributed.cli", *args], capture_output=True, text=True)


@pytest.mark.parametrize("override, message", [
    ("ppl.tua=0.1", "unknown config key 'ppl.tua' (did you mean 'ppl.tau'?)"),
    ("ppl.tau=0", "ppl.tau: must be > 0"),
    ("ppl.ema_decay=1.0", "ppl.ema_decay: must be in [0, 1)"),
    ("data.batch_size=many", "data.batch_size: expected int"),
])
def test_bad_config_is_one_line_and_exit_2(tiny_llp, tmp_path, override, message):
    proc = run_cli("train", f"data.annotations={tiny_llp / 'annotations'}", f"data.features={tiny_llp / 'features'}",
                   f"output_dir={tmp_path / 'r'}", override)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
    assert not (tmp_path / "r").exists()   # nothing written before validation


def test_missing_feature_file_names_the_file(tiny_llp, tmp_path):
    import shutil
    features = tmp_path / "features"
    shutil.copytree(tiny_llp / "features", features)
    victim = sorted((features / "vggish").glob("*.npy"))[0]
    victim.unlink()
    proc = run_cli("train", f"data.annotations={tiny_llp / 'annotations'}", f"data.features={features}",
                   f"output_dir={tmp_path / 'r'}", "distributed.num_workers=0", "distributed.engine=torch",
                   "tracking.mlflow=false", *TINY_MODEL)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert str(victim) in last or victim.name in last


def test_deepspeed_bf16_trains_with_float32_ema_and_bank(tiny_shards, tmp_path):
    cfg = tiny_config([f"data.shards={tiny_shards}"], tmp_path / "bf16", "distributed.engine=deepspeed",
                      "distributed.zero_stage=1", "distributed.precision=bf16", "optim.epochs=1",
                      "ppl.warmup_epochs=0", "ppl.key_min_prob=0.0", "tracking.mlflow=false")
    results = train(cfg, mlflow=False)
    assert len(results["test"]) == 10
    final = torch.load(tmp_path / "bf16" / "final_model.pt", weights_only=True)
    assert all(v.dtype == torch.float32 for k, v in final["momentum"].items()
               if torch.is_tensor(v) and v.is_floating_point())
    assert final["bank"]["prototypes"].dtype == torch.float32 and final["bank"]["initialized"].any()


def test_deepspeed_bf16_keeps_the_key_instance_head_for_em_mil(tiny_shards, tmp_path):
    # the bf16 forward's output is cast back to float32 field by field: EM-MIL's key_prob must come through too
    cfg = tiny_config([f"data.shards={tiny_shards}"], tmp_path / "em", "distributed.engine=deepspeed",
                      "distributed.zero_stage=0", "distributed.precision=bf16", "optim.epochs=2",
                      "ppl.warmup_epochs=1", "ppl.labeler=em_mil", "model.key_instance_head=true",
                      "tracking.mlflow=false")
    results = train(cfg, mlflow=False)
    assert len(results["test"]) == 10
    assert results["history"][-1]["loss_pseudo_label"] > 0   # the E/M steps ran on key instances
