"""One run on several processes (DDP, gloo on CPU, 2 ranks): identical states on every rank after every epoch,
one set of records, a halting variant, a killed rank and a killed parent (clean failure, no orphans, resume to the
end), the join path under torchrun, and the sharding rule.

Each test starts real processes (the ranks import torch, so each launch costs seconds on 2 cores): the studies are
tiny (synthetic data, depth 1, dim 16, T 2) and the kill sequence reuses one run across three invocations.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from processes import Background, child_env, status
from torch.utils.data import DistributedSampler

from suite import records
from suite.config import expand, parse_study
from suite.data import load_data
from suite.names import CHECKPOINT
from suite.run.unit import RunUnit, run_one
from suite.train.checkpoint import state_digest
from suite.train.loop import shard_indices

EPOCHS, TRAIN, BATCH = 5, 320, 32
KILL_STUDY = f"""
name: ddpk
dataset: {{name: synthetic, synthetic: {{train_size: {TRAIN}, test_size: 32}}}}
model: {{depth: 1, dim: 16, heads: 2, T: 2}}
train: {{epochs: {EPOCHS}, batch_size: {BATCH}, warmup_epochs: 1, lr: 5.0e-3, min_lr: 1.0e-4}}
eval: {{heatmap_images: 2}}
tracking: {{enabled: false}}
variants:
  act: {{tokens: {{halting: {{}}}}}}
"""
JOIN_STUDY = """
name: ddpj
dataset: {name: synthetic, synthetic: {train_size: 96, test_size: 32}}
model: {depth: 1, dim: 16, heads: 2, T: 2}
train: {epochs: 2, batch_size: 16, warmup_epochs: 1, lr: 5.0e-3, min_lr: 1.0e-4}
eval: {heatmap_images: 2}
variants:
  dense: {}
"""

# Runs every unit of STUDY with nproc_per_run N through run_one (spawned ranks, or joined under torchrun), REPEAT
# times over, logging at DEBUG so rank 0's per-epoch state digests are printed; prints each result as JSON.
RUNNER = """
import dataclasses, glob, json, logging, os, sys
from pathlib import Path

from suite.config import expand, load_study
from suite.run.distributed import leave_group
from suite.run.unit import RunUnit, run_one
from suite.tracking import TrackingTarget


def main():
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("spikesuite").setLevel(logging.DEBUG)
    study = load_study(Path(sys.argv[1]))
    results, nproc, repeat = Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    target = TrackingTarget(study.tracking, study.name, results) if study.tracking.enabled else None
    bad = 0
    for spec in expand(study) * repeat:
        unit = RunUnit(spec, results / study.name, device="cpu", progress=False, tracking=target,
                       nproc_per_run=nproc, ddp_timeout_s=60)
        res = run_one(unit)
        print(json.dumps({"rank": os.environ.get("RANK"), **dataclasses.asdict(res)}), flush=True)
        bad += res.outcome not in ("done", "skipped")
    leave_group()
    # the native threads left (Linux names them in /proc): gloo's must be gone, or they abort the exit at random
    names = sorted(Path(p).read_text().strip() for p in glob.glob("/proc/self/task/*/comm"))
    print("threads after leave_group:", json.dumps(names), file=sys.stderr, flush=True)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
"""


class Invocation(Background):
    """``python runner.py STUDY RESULTS 2 REPEAT`` in the background (or under torchrun), output to files."""

    def __init__(self, tmp: Path, study: Path, results: Path, name: str, *, torchrun: bool = False,
                 repeat: int = 1):
        runner = tmp / "runner.py"
        runner.write_text(RUNNER)
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"] \
            if torchrun else [sys.executable]
        super().__init__([*launcher, str(runner), str(study), str(results), "2", str(repeat)], tmp / f"{name}.log",
                         cwd=tmp, env=child_env("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"))

    def wait(self, timeout: float = 150) -> int:
        return super().wait(timeout)

    @property
    def results(self) -> list[dict]:
        return [json.loads(line) for line in self.out_path.read_text().splitlines() if line.startswith("{")]


def _ckpt_epoch(run_dir: Path) -> int:
    try:
        return int(torch.load(run_dir / CHECKPOINT, weights_only=True)["epoch"])
    except (OSError, RuntimeError, EOFError, KeyError):
        return 0


def _digests(stderr: str) -> dict[int, list[str]]:
    """epoch -> every rank's state digest, from rank 0's DEBUG lines."""
    out = {}
    for epoch, digests in re.findall(r"epoch (\d+): state sha256 \w+ identical on all 2 ranks (\[.*?\])", stderr):
        out[int(epoch)] = json.loads(digests.replace("'", '"'))
    assert "the ranks hold different states" not in stderr
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_shards_follow_distributed_sampler_and_cover_the_epoch():
    for n, world in [(97, 2), (96, 4), (5, 3)]:
        for epoch in (0, 1):
            shards = [shard_indices(n, world=world, rank=r, seed=700 + epoch) for r in range(world)]
            for r, shard in enumerate(shards):
                sampler = DistributedSampler(range(n), num_replicas=world, rank=r, shuffle=True, seed=700)
                sampler.set_epoch(epoch)
                assert shard == list(sampler)  # torch's rule, seed + epoch
                assert len(shard) == math.ceil(n / world)  # equal steps on every rank
            assert set().union(*map(set, shards)) == set(range(n))
    assert shard_indices(97, world=2, rank=0, seed=1) != shard_indices(97, world=2, rank=0, seed=2)


def test_global_batch_must_divide_among_the_ranks(tmp_path: Path):
    study = parse_study(JOIN_STUDY.replace("batch_size: 16", "batch_size: 15").replace("ddpj", "odd"))
    spec = expand(study)[0]
    res = run_one(RunUnit(spec, tmp_path / "odd", device="cpu", progress=False, nproc_per_run=2))
    assert res.outcome == "failed" and "train.batch_size 15" in res.reason and "nproc_per_run 2" in res.reason
    assert status(tmp_path / "odd" / spec.run_id)["state"] == "failed"


def test_killed_rank_fails_cleanly_killed_parent_leaves_no_rank_and_the_run_resumes(tmp_path: Path):
    """A halting variant on 2 spawned ranks: SIGKILL rank 1 mid-run (the run fails at once, naming it), then SIGKILL
    the parent mid-run (its ranks die with it), then a third invocation resumes and finishes. Every epoch of every
    invocation ends with bit-identical states on both ranks; one set of records comes out."""
    study = tmp_path / "ddpk.yaml"
    study.write_text(KILL_STUDY)
    (spec,) = expand(parse_study(KILL_STUDY))
    results = tmp_path / "res"
    rd = results / "ddpk" / spec.run_id

    # 1. kill rank 1 once the first checkpoint exists: the run fails with the rank and signal named, no hang
    inv = Invocation(tmp_path, study, results, "inv1")
    inv.wait_until(lambda: _ckpt_epoch(rd) >= 1 and status(rd).get("rank_pids"), "the first checkpoint")
    pids = status(rd)["rank_pids"]
    os.kill(pids[1], signal.SIGKILL)
    t_kill = time.monotonic()
    assert inv.wait(60) == 1, inv.stderr[-3000:]
    assert time.monotonic() - t_kill < 30  # no collective timeout was waited for (ddp_timeout_s is 60)
    st = status(rd)
    assert st["state"] == "failed" and st["world_size"] == 2, st
    assert f"rank 1 of 2 (pid {pids[1]}) was killed by SIGKILL" in st["reason"], st["reason"]
    assert not any(_alive(p) for p in pids)
    first = _ckpt_epoch(rd)
    assert 1 <= first < EPOCHS
    digests = _digests(inv.stderr)

    # 2. kill the parent once it has written a new checkpoint: both ranks end with it, the run stays resumable
    inv = Invocation(tmp_path, study, results, "inv2")
    inv.wait_until(lambda: _ckpt_epoch(rd) > first, "a checkpoint after resuming")
    pids = status(rd)["rank_pids"]
    inv.p.send_signal(signal.SIGKILL)
    assert inv.wait(30) == -signal.SIGKILL
    t0 = time.monotonic()
    while any(_alive(p) for p in pids) and time.monotonic() - t0 < 10:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids), "a rank outlived its parent"
    assert f"{spec.run_id} running (resuming) on 2 ranks" in inv.stderr
    second = _ckpt_epoch(rd)
    assert first < second < EPOCHS
    digests.update(_digests(inv.stderr))

    # 3. resume and finish
    inv = Invocation(tmp_path, study, results, "inv3")
    assert inv.wait() == 0, inv.stderr[-3000:]
    assert "(resuming) on 2 ranks" in inv.stderr
    digests.update(_digests(inv.stderr))
    assert sorted(digests) == list(range(1, EPOCHS + 1))  # every epoch, compared on both ranks
    assert all(len(d) == 2 and d[0] == d[1] for d in digests.values()), digests
    ck = torch.load(rd / CHECKPOINT, weights_only=True)
    assert state_digest(ck["model"]) == digests[EPOCHS][0]  # the checkpoint is the ranks' common state
    assert ck["world_size"] == 2 and len(ck["rng_ranks"]) == 2
    # the global batch stays train.batch_size: as many optimizer steps as one process takes
    n_train = len(load_data(spec.config.dataset).train)
    assert ck["scheduler"]["last_epoch"] == EPOCHS * math.ceil(n_train / BATCH)
    # one set of records: one row per epoch, written by rank 0 only
    hist = pd.read_csv(rd / records.HISTORY)
    assert list(hist.epoch) == list(range(1, EPOCHS + 1))
    assert hist.train_loss.notna().all() and "train_ponder" in " ".join(hist.columns)  # halting trained
    m = json.loads((rd / records.METRICS).read_text())["metrics"]
    assert m["world_size"] == 2 and m["batch_size_used"] == BATCH and m["batch_size_per_rank"] == BATCH // 2
    st = status(rd)
    assert st["state"] == "done" and st["world_size"] == 2 and st["attempts"] == 3


def test_joined_group_under_torchrun_writes_one_set_of_records(tmp_path: Path):
    """torchrun starts both ranks (RANK/WORLD_SIZE set, as submitit's TorchDistributedEnvironment exports them);
    each calls run_one on the same unit: rank 0 claims, records and mirrors the run once, rank 1 only trains."""
    from mlflow.tracking import MlflowClient

    study = tmp_path / "ddpj.yaml"
    study.write_text(JOIN_STUDY)
    (spec,) = expand(parse_study(JOIN_STUDY))
    results = tmp_path / "res"
    inv = Invocation(tmp_path, study, results, "join", torchrun=True, repeat=2)
    assert inv.wait() == 0, inv.stderr[-4000:]
    # the second call finds the run done on rank 0, which tells rank 1: both skip it
    outcomes = [(r["rank"], r["outcome"]) for r in inv.results]
    assert sorted(outcomes) == [("0", "done"), ("0", "skipped"), ("1", "done"), ("1", "skipped")], outcomes
    assert inv.stderr.count(f"{spec.run_id} running") == 1
    # leave_group ends the group for real: no gloo thread survives into interpreter shutdown (where, kept alive by
    # a late torch._dynamo import, they aborted the exit now and then: suite.run.distributed.init_group)
    left = [json.loads(t) for t in re.findall(r"threads after leave_group: (\[.*\])", inv.stderr)]
    assert len(left) == 2 and not [n for names in left for n in names if "gloo" in n], left
    digests = _digests(inv.stderr)
    assert sorted(digests) == [1, 2] and all(d[0] == d[1] for d in digests.values())
    rd = results / "ddpj" / spec.run_id
    assert len(pd.read_csv(rd / records.HISTORY)) == 2
    st = status(rd)
    assert st["state"] == "done" and st["world_size"] == 2 and st["attempts"] == 1
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name("ddpj")
    children = client.search_runs([exp.experiment_id], "tags.`spikesuite.kind` = 'run'")
    assert len(children) == 1 and children[0].info.status == "FINISHED"


def test_one_process_never_touches_torch_distributed(tmp_path: Path):
    """``nproc_per_run: 1`` is today's path: no process group, no spawned rank, no world size in the records."""
    import torch.distributed as dist

    study = parse_study(JOIN_STUDY.replace("epochs: 2", "epochs: 1"))
    spec = expand(study)[0]
    res = run_one(RunUnit(spec, tmp_path / "one", device="cpu", progress=False, nproc_per_run=1))
    assert res.outcome == "done" and not dist.is_initialized()
    rd = tmp_path / "one" / spec.run_id
    assert "world_size" not in status(rd) and "world_size" not in json.loads((rd / records.METRICS).read_text())[
        "metrics"]
    assert "world_size" not in torch.load(rd / CHECKPOINT, weights_only=True)
