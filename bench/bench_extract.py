"""Extraction throughput and memory (printed; nothing asserted).

    python bench/bench_extract.py speed  [--clips 4 --seconds 2]        clips/s per backbone, in-process, CPU
    python bench/bench_extract.py memory [--counts 100,10000]           peak RSS of the driver and the
                                                                         whole Ray process tree, per run

``speed``: decode + prepare (CPU) and each backbone's forward (random weights: the cost does not depend on
the values), timed apart (decoding twice: 16 kHz only, then with the other rates registered backbones read), on clips encoded here (32x24, 12 fps). ``memory``: one
``ppl-avvp extract --random-init --backbones vggish`` run per count over that many tiny synthetic clips
(2 s, 32x24); the cheapest backbone keeps 10,000 clips within minutes; what is measured is the streaming.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def speed(clips: int, seconds: float) -> None:
    import torch

    from distributed.extract import backbones, sampling
    from distributed.extract.backbones import Prepared
    from distributed.extract.decode import decode
    from distributed.extract.weights import build_model
    from extract_clips import encode_clip

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        paths = [encode_clip(Path(tmp) / f"c{k}.mp4", seconds, seed=k) for k in range(clips)]
        t0 = time.perf_counter()
        for path in paths:
            video = decode(path)
            sampling.frame_indices(video.times, video.durations, sampling.num_segments(video.seconds))
        print(f"decode+pick        {clips / (time.perf_counter() - t0):8.2f} clips/s  ({seconds:g} s clips, 32x24)")
        # the rates every registered backbone reads (48 kHz for CLAP): decoded only when such a backbone is chosen
        rates = backbones.extra_audio_rates([backbones.get(name) for name in backbones.REGISTRY])
        t0 = time.perf_counter()
        items = []
        for path in paths:
            video = decode(path, extra_audio_rates=rates)
            count = sampling.num_segments(video.seconds)
            items.append(Prepared(video.frames[sampling.frame_indices(video.times, video.durations, count)],
                                  video.audio, count, extra_audio=video.extra_audio))
        print(f"decode+pick        {clips / (time.perf_counter() - t0):8.2f} clips/s  "
              f"(also at {', '.join(f'{r / 1000:g} kHz' for r in rates)})")
        for name in backbones.REGISTRY:
            backbone = backbones.get(name)
            model = build_model(backbone, None, random_init=True)
            t0 = time.perf_counter()
            inputs = [backbone.prepare(item) for item in items]
            prep = time.perf_counter() - t0
            t0 = time.perf_counter()
            with torch.inference_mode():
                for x in inputs:
                    backbone.forward(model, x, torch.device("cpu"))
            run = time.perf_counter() - t0
            print(f"{name:<18} {clips / run:8.2f} clips/s forward, {clips / prep:8.1f} clips/s prepare  "
                  f"(1 thread; {clips * backbone.items(items[0].segments)} items)")


def _tree_rss_kb(root: int) -> tuple[int, int]:
    """(RSS of root, RSS of root and all its descendants) in kB, from /proc."""
    parents, rss = {}, {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                parents[int(entry)] = int(stat[1])
                rss[int(entry)] = int(stat[21]) * os.sysconf("SC_PAGE_SIZE") // 1024
            except (OSError, IndexError, ValueError):
                pass
    tree, grew = {root}, True
    while grew:
        more = {p for p, pp in parents.items() if pp in tree} - tree
        tree |= more
        grew = bool(more)
    return rss.get(root, 0), sum(rss.get(p, 0) for p in tree)


def memory(counts: list[int]) -> None:
    from extract_clips import encode_clip

    with tempfile.TemporaryDirectory() as tmp:
        seed_clip = encode_clip(Path(tmp) / "seed.mp4", 2.0, seed=1)
        for count in counts:
            videos = Path(tmp) / f"v{count}"
            videos.mkdir()
            for k in range(count):  # the same bytes under many names: synthetic clips cost no encoding time
                os.link(seed_clip, videos / f"c{k:010d}.mp4")
            cmd = [sys.executable, "-m", "distributed.cli", "extract", "--videos", str(videos), "--out",
                   str(Path(tmp) / f"o{count}"), "--random-init", "--backbones", "vggish", "--quiet",
                   "--batch-size", "32", "--model-cpus", "0.5", "--decode-cpus", "0.5"]
            env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
            env.pop("RAY_ADDRESS", None)
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            peak = [0, 0]
            def poll():
                while proc.poll() is None:
                    driver, tree = _tree_rss_kb(proc.pid)
                    peak[0], peak[1] = max(peak[0], driver), max(peak[1], tree)
                    time.sleep(0.5)
            watcher = threading.Thread(target=poll)
            watcher.start()
            out, _ = proc.communicate()
            watcher.join()
            wall = time.perf_counter() - t0
            print(f"{count:>6} clips: {wall:7.1f} s ({count / wall:.1f} clips/s), peak RSS driver {peak[0] / 1024:.0f} MB, "
                  f"driver + Ray tree {peak[1] / 1024:.0f} MB, rc {proc.returncode}; {out.strip().splitlines()[-1:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("speed", "memory"))
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--counts", default="100,10000")
    opts = parser.parse_args()
    if opts.what == "speed":
        speed(opts.clips, opts.seconds)
    else:
        memory([int(c) for c in opts.counts.split(",")])


if __name__ == "__main__":
    main()
