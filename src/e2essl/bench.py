"""``make bench``: speeds and ratios measured side by side in one run, written to benchmarks/results.md.

Machines here are shared and noisy, so every comparison is a ratio of two things timed in the same
run, interleaved (A B A B ...), taking the best of the repeats for each; for the training loops
against the bare step, the median of the per-round ratios (see :func:`loop_against_bare`).

1. The simulator: jets/s including the HDF5 file, and the ROC AUC of single observables.
2. The real training loops (gather, augmentation, preprocessing, densify, step) against the bare
   model step on tensors already in memory, step by step: supervised and Barlow Twins.
3. The data path alone (reading, preprocessing, two augmented views, no model) against a naive
   loader (a per-jet ``Dataset`` indexing h5py one jet at a time, per-sample numpy flips, a
   standard ``DataLoader``).
4. 1 against 2 processes under torchrun on the CPU, same global batch.
5. channels-last against the default memory format for the ResNet-15 step.
6. Peak memory of a streamed pass over a file larger than the memory budget.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from e2essl.config import Augment, Params, Simulate

BATCH = 64
SSL_BATCH = 128


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="benchmarks/results.md", help="Markdown results (a .json lands beside it)")
    parser.add_argument("--quick", action="store_true", help="fewer jets and repeats (a smoke run)")
    parser.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=6, help=argparse.SUPPRESS)


def interleaved(fns: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """Best time of each function, run in turns so that machine noise hits all of them alike."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            best[name] = min(best[name], fn())
    return best


def loop_against_bare(bare: Callable[[], float], real: Callable[[int], float], rounds: int) -> dict:
    """Seconds per jet of one bare step and of one step of the real loop, timed back to back in each
    round (which goes first alternates), after two warm-up rounds.

    The ratio quoted is the median over rounds of each round's bare / loop: a step takes 0.1-0.4 s,
    so a burst of load from the machine's other tenants hits both halves of a round alike, and the
    per-round ratio is far steadier than two times taken seconds apart. The best time of each is
    kept too.
    """
    times = []
    for r in range(rounds + 2):
        t = {}
        for name in ("bare", "real") if r % 2 == 0 else ("real", "bare"):
            t[name] = bare() if name == "bare" else real(r)
        if r >= 2:
            times.append(t)
    ratios = sorted(t["bare"] / t["real"] for t in times)
    best_bare, best_real = min(t["bare"] for t in times), min(t["real"] for t in times)
    return {
        "bare_jets_per_s": 1 / best_bare,
        "loop_jets_per_s": 1 / best_real,
        "ratio": float(np.median(ratios)),
        "ratio_range": [ratios[0], ratios[-1]],
        "ratio_quartiles": [float(np.quantile(ratios, 0.25)), float(np.quantile(ratios, 0.75))],
        "ratio_of_best_times": best_bare / best_real,
        "bare_seconds_per_jet_median": float(np.median([t["bare"] for t in times])),
        "rounds": rounds,
    }


class _StandIn(torch.nn.Module):
    """One linear layer in the network's place: timing the loop with it measures what the loop
    itself adds to a step (gather, augmentation, preprocessing, densify, loss, optimiser, book-keeping)."""

    def __init__(self, out: int) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(3, out)

    def forward(self, x: torch.Tensor, x_b: torch.Tensor | None = None):
        if x_b is None:
            return self.lin(x[:, :, 0, 0]).squeeze(-1)  # (B,) logits
        return self.lin(x[:, :, 0, 0]), self.lin(x_b[:, :, 0, 0])  # (B, D) twice


def _loop_overhead(result: dict, step: Callable[[int], None], batch: int, steps: int) -> dict:
    """Add the median time of ``steps`` loop steps run with the stand-in (after 5 warm-up steps),
    and its share of the median bare step."""
    times = []
    for r in range(steps + 5):
        t = time.perf_counter()
        step(r)
        times.append(time.perf_counter() - t)
    overhead = float(np.median(times[5:]))
    bare_step = result["bare_seconds_per_jet_median"] * batch
    return result | {"loop_overhead_ms": overhead * 1e3, "bare_step_ms": bare_step * 1e3, "overhead_share": overhead / bare_step}


# -- 1. simulator ---------------------------------------------------------------------------
def bench_simulator(tmp: Path, n: int) -> dict:
    from sklearn.metrics import roc_auc_score

    from e2essl.data.files import Layout, open_jet_file
    from e2essl.data.simulate import write_simulated_file
    from e2essl.observables import jet_observables

    t0 = time.perf_counter()
    path = write_simulated_file(tmp / "sim.h5", n, 7, Simulate(), labelled=True, progress=False)
    rate = n / (time.perf_counter() - t0)
    with open_jet_file(path, Layout(), require_labels=True) as jets:
        images, labels, m0 = jets.read_images(0, n), jets.read_labels(), jets.read_column("m0")
    obs = jet_observables(images)
    candidates = {
        "track-pixel multiplicity": obs["pixels_ch0"],
        "total pixel multiplicity": obs["pixels_ch0"] + obs["pixels_ch1"] + obs["pixels_ch2"],
        "width (energy-weighted mean R)": obs["width"],
        "jet mass m0": m0,
        "image mass": obs["mass"],
    }
    aucs = {}
    for name, v in candidates.items():
        a = roc_auc_score(labels, v)
        aucs[name] = max(a, 1 - a)
    return {"jets": n, "jets_per_s": rate, "observable_auc": aucs}


# -- 2. training loops against the bare step ------------------------------------------------
def _toy_store(n: int, seed: int = 0):
    """Simulated jets, sparse in memory, as the training stages hold them."""
    from e2essl.data.simulate import simulate_jets
    from e2essl.data.sparse import SparseJets

    chunks = list(simulate_jets(n, seed, Simulate()))
    images = np.concatenate([c.images for c in chunks]).transpose(0, 3, 1, 2)
    labels = np.concatenate([c.y for c in chunks])
    return SparseJets.from_dense(torch.from_numpy(np.ascontiguousarray(images)), labels)


def _normaliser(jets):
    from e2essl.data.preprocess import ChannelStats, Normaliser

    c, h, w = jets.image_shape
    stats = ChannelStats(channels=c, pixels_per_channel=h * w)
    stats.update(jets.values.numpy(), jets.pixel.numpy(), len(jets))
    return Normaliser.from_stats("log", stats, ["Tracks", "ECAL", "HCAL"])


def _one_batch_sets(jets, batch: int) -> list:
    """The jets cut into sets of one batch each: an epoch over one of them is one step of the loop."""
    return [jets.subset(torch.arange(lo, lo + batch)) for lo in range(0, len(jets) - batch + 1, batch)]


def bench_supervised(jets, rounds: int) -> dict:
    """One step of ``train_epoch`` (gather, flips/rotations, normalise, densify, BCE, Adam, the
    epoch's own set-up) against one bare ResNet-15 step on a batch already in memory."""
    from e2essl.data.sparse import DenseBuffer
    from e2essl.distributed import Dist
    from e2essl.models import ResNet15
    from e2essl.training.supervised import SupervisedPlan, train_epoch

    norm = _normaliser(jets)
    dev = torch.device("cpu")
    sets = _one_batch_sets(jets, BATCH)
    plan = SupervisedPlan(epochs=1, batch_size=BATCH, schedule="constant", seed=1)
    model = ResNet15().to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = norm(jets.gather(torch.arange(BATCH)))  # channels-last already
    y = jets.labels[:BATCH].float()
    buffer = DenseBuffer()  # as train_supervised keeps one for the whole run

    def bare() -> float:
        t = time.perf_counter()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return (time.perf_counter() - t) / BATCH

    def real(r: int) -> float:
        t = time.perf_counter()
        train_epoch(model, model, opt, sets[r % len(sets)], norm, plan, r, dev, Dist(), buffer=buffer)
        return (time.perf_counter() - t) / BATCH

    result = loop_against_bare(bare, real, rounds)
    # The same pairing with the bare step on both sides: how far apart two identical steps measure.
    control = loop_against_bare(bare, lambda r: bare(), rounds)
    result["control_ratio"], result["control_quartiles"] = control["ratio"], control["ratio_quartiles"]
    stand_in = _StandIn(1)
    opt_s = torch.optim.Adam(stand_in.parameters(), lr=1e-4)
    return _loop_overhead(
        result, lambda r: train_epoch(stand_in, stand_in, opt_s, sets[r % len(sets)], norm, plan, r, dev, Dist(), buffer=buffer), BATCH, 50
    )


def bench_ssl(jets, rounds: int) -> dict:
    """One step of ``pretrain_epoch`` (gather, two augmented views, normalise, densify, Barlow Twins,
    AdamW, schedule, the epoch's own set-up) against one bare step on two views already in memory."""
    from e2essl.data.sparse import DenseBuffer
    from e2essl.distributed import Dist
    from e2essl.losses import barlow_twins_loss
    from e2essl.models import ResNet15, make_projector
    from e2essl.training.pretrain import PretrainPlan, SiameseModel, pretrain_epoch

    norm = _normaliser(jets)
    dev = torch.device("cpu")
    sets = _one_batch_sets(jets, SSL_BATCH)
    model = SiameseModel(ResNet15(), make_projector(32, [256, 256, 256])).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    plan = PretrainPlan("barlow_twins", 1, SSL_BATCH, 1e-4, 0.0, seed=1)
    xa = norm(jets.gather(torch.arange(SSL_BATCH)))
    xb = norm(jets.gather(torch.arange(SSL_BATCH, 2 * SSL_BATCH)))
    buffers = DenseBuffer(), DenseBuffer()  # as train_ssl keeps a pair for the whole run

    def bare() -> float:
        t = time.perf_counter()
        loss = barlow_twins_loss(*model(xa, xb)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        return (time.perf_counter() - t) / SSL_BATCH

    def real(r: int) -> float:
        t = time.perf_counter()
        pretrain_epoch(model, opt, sched, sets[r % len(sets)], norm, Augment(), plan, r, dev, Dist(), buffers=buffers)
        return (time.perf_counter() - t) / SSL_BATCH

    result = loop_against_bare(bare, real, rounds)
    stand_in = _StandIn(256)
    opt_s = torch.optim.AdamW(stand_in.parameters(), lr=1e-4)
    sched_s = torch.optim.lr_scheduler.LambdaLR(opt_s, lambda s: 1.0)
    return _loop_overhead(
        result,
        lambda r: pretrain_epoch(stand_in, opt_s, sched_s, sets[r % len(sets)], norm, Augment(), plan, r, dev, Dist(), buffers=buffers),
        SSL_BATCH,
        30,
    )


def bench_channels_last(repeats: int) -> dict:
    from e2essl.models import ResNet15

    x = torch.rand(BATCH, 3, 125, 125)
    y = (torch.rand(BATCH) > 0.5).float()
    out = {}
    for name, fmt in (("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last)):
        model = ResNet15().to(memory_format=fmt)
        opt = torch.optim.Adam(model.parameters())
        xi = x.contiguous(memory_format=fmt)

        def step(model=model, opt=opt, xi=xi) -> float:
            t = time.perf_counter()
            for _ in range(4):
                loss = torch.nn.functional.binary_cross_entropy_with_logits(model(xi), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
            return (time.perf_counter() - t) / (4 * BATCH)

        out[name] = step
    best = interleaved(out, repeats)
    return {
        "contiguous_jets_per_s": 1 / best["contiguous"],
        "channels_last_jets_per_s": 1 / best["channels_last"],
        "speedup": best["contiguous"] / best["channels_last"],
    }


# -- 3. data path alone against a naive loader ---------------------------------------------
class NaiveDataset(torch.utils.data.Dataset):
    """The naive reference: one h5py read per jet, per-sample numpy flips, two views."""

    def __init__(self, path: Path) -> None:
        import h5py

        self.path = path
        with h5py.File(path) as f:
            self.n = f["X_jets"].shape[0]
        self.file = None

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        import h5py

        if self.file is None:
            self.file = h5py.File(self.path)
        x = self.file["X_jets"][i].transpose(2, 0, 1)  # (C, H, W)
        views = []
        for _ in range(2):
            v = x
            if np.random.rand() < 0.5:
                v = v[:, ::-1]
            if np.random.rand() < 0.5:
                v = v[:, :, ::-1]
            if np.random.rand() < 0.5:
                v = v.transpose(0, 2, 1)
            views.append(torch.from_numpy(np.log1p(np.ascontiguousarray(v))))
        return views[0], views[1]


def bench_data_path(tmp: Path, n: int, repeats: int) -> dict:
    from e2essl.augment import augment
    from e2essl.data.files import Layout, open_jet_file
    from e2essl.data.simulate import write_simulated_file
    from e2essl.data.sparse import SparseJets, epoch_order, global_batches

    path = tmp / "data_path.h5"
    write_simulated_file(path, n, 3, Simulate(), labelled=True, progress=False)
    loader = torch.utils.data.DataLoader(NaiveDataset(path), batch_size=SSL_BATCH, shuffle=True, num_workers=0)

    def naive() -> float:
        t = time.perf_counter()
        for a, b in loader:
            assert a.shape[0] == b.shape[0]
        return time.perf_counter() - t

    state: dict = {}

    def ours_first_epoch() -> float:
        t = time.perf_counter()
        with open_jet_file(path, Layout(), require_labels=True) as jets:
            state["jets"] = SparseJets.from_file(jets)
        state["norm"] = _normaliser(state["jets"])
        ours_epoch_body(0)
        return time.perf_counter() - t

    def ours_epoch_body(epoch: int) -> None:
        jets, norm = state["jets"], state["norm"]
        gen = torch.Generator().manual_seed(epoch)
        for idx in global_batches(epoch_order(len(jets), 1, epoch), SSL_BATCH, drop_last=False):
            batch = jets.gather(idx)
            a, b = norm(augment(batch, Augment(), gen)), norm(augment(batch, Augment(), gen))
            assert a.shape == b.shape

    def ours_steady() -> float:
        t = time.perf_counter()
        ours_epoch_body(1)
        return time.perf_counter() - t

    best = interleaved({"naive": naive, "first": ours_first_epoch, "steady": ours_steady}, repeats)
    return {
        "jets": n,
        "naive_jets_per_s": n / best["naive"],
        "ours_first_epoch_jets_per_s": n / best["first"],
        "ours_jets_per_s": n / best["steady"],
        "speedup": best["naive"] / best["steady"],
        "speedup_first_epoch": best["naive"] / best["first"],
    }


# -- 4. torchrun: 1 against 2 processes ------------------------------------------------------
def ddp_worker(steps: int) -> None:
    """Run ``steps`` Barlow Twins steps on the global batch; rank 0 prints jets/s as JSON."""
    from e2essl.distributed import init_distributed, shutdown
    from e2essl.models import ResNet15, make_projector
    from e2essl.training.pretrain import PretrainPlan, SiameseModel, ssl_loss

    d = init_distributed("cpu")
    torch.manual_seed(0)
    jets = _toy_store(2 * SSL_BATCH)
    norm = _normaliser(jets)
    model = SiameseModel(ResNet15(), make_projector(32, [256, 256, 256])).to(memory_format=torch.channels_last)
    net = torch.nn.parallel.DistributedDataParallel(model) if d.enabled else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    plan = PretrainPlan("barlow_twins", 1, SSL_BATCH, 1e-4, 0.0, seed=1)
    gen = torch.Generator().manual_seed(0)
    times = []
    for step in range(steps + 1):
        t = time.perf_counter()
        terms = ssl_loss(net, jets.gather(torch.arange(SSL_BATCH)), Augment(), gen, norm, plan, torch.device("cpu"), d)
        opt.zero_grad()
        terms.loss.backward()
        opt.step()
        if step:  # the first step warms up
            times.append(time.perf_counter() - t)
    if d.is_main:
        print(json.dumps({"world": d.world, "threads": torch.get_num_threads(), "jets_per_s": SSL_BATCH / float(np.median(times))}))
    shutdown(d)


def bench_ddp(steps: int) -> dict:
    def launch(nproc: int, threads: int) -> dict:
        env = os.environ | {"OMP_NUM_THREADS": str(threads), "E2ESSL_PROGRESS": "0"}
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            "-m",
            "e2essl.cli",
            "bench",
            "--ddp-worker",
            "--steps",
            str(steps),
        ]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-2000:])
        return json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])

    one = launch(1, 2)
    two = launch(2, 1)
    return {
        "one_process_2_threads_jets_per_s": one["jets_per_s"],
        "two_processes_1_thread_jets_per_s": two["jets_per_s"],
        "scaling": two["jets_per_s"] / one["jets_per_s"],
    }


# -- 6. peak memory of a streamed pass ------------------------------------------------------
def _prepare_peak_rss(tmp: Path, n: int, name: str) -> tuple[float, float]:
    """Peak RSS (GiB) of ``e2essl prepare`` over an n-jet file, and the file's dense size (GiB)."""
    from e2essl.data.simulate import write_simulated_file

    path = write_simulated_file(tmp / f"{name}.h5", n, 5, Simulate(), labelled=True, progress=False)
    (tmp / "params.yaml").write_text("data:\n  memory_budget_gb: 0.25\n  read_chunk: 256\n")
    code = (
        # VmHWM, not ru_maxrss: Linux carries a parent's ru_maxrss over fork and exec.
        "import re, sys; from e2essl.cli import main; rc = main(sys.argv[1:]); "
        "print('PEAK', re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)); sys.exit(rc)"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "--params",
            str(tmp / "params.yaml"),
            "prepare",
            "--input",
            str(path),
            "--out",
            str(tmp / f"prepared_{name}"),
        ],
        capture_output=True,
        text=True,
        env=os.environ | {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db", "E2ESSL_PROGRESS": "0"},
        timeout=1800,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    peak_kib = int([line for line in done.stdout.splitlines() if line.startswith("PEAK")][-1].split()[1])
    return peak_kib / 2**20, n * 3 * 125 * 125 * 4 / 2**30


def bench_streaming(tmp: Path, n: int) -> dict:
    """Peak memory of ``prepare`` on a file larger than the budget, against a file 10x smaller:
    a streamed pass grows far less than the file (the process itself, torch and MLflow, is the floor)."""
    small_peak, small_gib = _prepare_peak_rss(tmp, max(n // 10, 200), "small")
    big_peak, big_gib = _prepare_peak_rss(tmp, n, "big")
    return {
        "jets": n,
        "file_dense_gib": big_gib,
        "small_file_dense_gib": small_gib,
        "budget_gib": 0.25,
        "peak_rss_gib": big_peak,
        "small_peak_rss_gib": small_peak,
        "rss_growth_per_file_growth": (big_peak - small_peak) / (big_gib - small_gib),
    }


# -- the report -----------------------------------------------------------------------------
def _ratio_row(what: str, a: float, b: float, ratio: float, target: str, unit: str = "jets/s", suffix: str = "x") -> str:
    return f"| {what} | {a:,.0f} / {b:,.0f} {unit} = **{ratio:.2f}{suffix}** | {target} |"


def render(results: dict) -> str:
    """benchmarks/results.md from the results dict."""
    r = results
    lines = [
        "# Benchmarks",
        "",
        f"`make bench` on {r['machine']}, {r['date']}. Ratios are measured side by side in one run "
        "(interleaved repeats, best of each; the training loops: median over steps paired with a bare step); "
        "absolute speeds move with the machine's load.",
        "",
        "| what | measured | target |",
        "|---|---|---|",
    ]
    if s := r.get("simulator"):
        lines.append(f"| simulator, HDF5 file included | {s['jets_per_s']:,.0f} jets/s | >= 1,000 jets/s |")
    for key, what in (("supervised", "supervised loop / bare ResNet-15 step"), ("barlow_twins", "Barlow Twins loop / bare step (2 views)")):
        if x := r.get(key):
            lo, hi = x["ratio_quartiles"]
            lines.append(
                f"| {what} | **{x['ratio']:.2f}**, median of {x['rounds']} paired steps (quartiles {lo:.2f}-{hi:.2f}); best times "
                f"{x['loop_jets_per_s']:,.0f} / {x['bare_jets_per_s']:,.0f} jets/s = {x['ratio_of_best_times']:.2f}; "
                f"the loop's own cost (model stood in for by one linear layer): {x['loop_overhead_ms']:.1f} ms per step, "
                f"{100 * x['overhead_share']:.1f} % of the {x['bare_step_ms']:.0f} ms bare step | >= 0.95 |"
            )
            if "control_ratio" in x:
                lo, hi = x["control_quartiles"]
                lines.append(
                    f"| control: bare step / the same bare step, paired the same way (the measurement's noise) | "
                    f"**{x['control_ratio']:.2f}** (quartiles {lo:.2f}-{hi:.2f}) | 1.00 |"
                )
    if x := r.get("data_path"):
        what = f"data path alone (read, preprocess, 2 views), ours / naive; first epoch with the file read: {x['speedup_first_epoch']:.1f}x"
        lines.append(_ratio_row(what, x["ours_jets_per_s"], x["naive_jets_per_s"], x["speedup"], ">= 2x"))
    if x := r.get("ddp"):
        what = "torchrun on the CPU, 2 processes x 1 thread / 1 process x 2 threads"
        lines.append(
            _ratio_row(
                what, x["two_processes_1_thread_jets_per_s"], x["one_process_2_threads_jets_per_s"], x["scaling"], "reported", suffix=""
            )
        )
    if x := r.get("channels_last"):
        what = "ResNet-15 step, channels-last / default memory layout"
        lines.append(_ratio_row(what, x["channels_last_jets_per_s"], x["contiguous_jets_per_s"], x["speedup"], "reported"))
    if x := r.get("streaming"):
        what = f"streamed `prepare` of a {x['file_dense_gib']:.1f} GiB (dense float32) file, memory budget {x['budget_gib']} GiB"
        measured = (
            f"peak RSS {x['peak_rss_gib']:.2f} GiB, against {x['small_peak_rss_gib']:.2f} GiB "
            f"for a {x['small_file_dense_gib']:.2f} GiB file: "
            f"**{x['rss_growth_per_file_growth']:.2f} GiB more memory per GiB more file**"
        )
        lines.append(f"| {what} | {measured} | well below 1 (memory does not follow the file) |")
    if s := r.get("simulator"):
        lines += [
            "",
            f"Single observables on {s['jets']:,} simulated jets (ROC AUC, quark vs gluon):",
            "",
            "| observable | ROC AUC |",
            "|---|---|",
        ]
        lines += [f"| {k} | {v:.3f} |" for k, v in s["observable_auc"].items()]
    lines += ["", "Raw numbers: `benchmarks/results.json`.", ""]
    return "\n".join(lines)


def run(args: argparse.Namespace, params: Params) -> None:
    if args.ddp_worker:
        ddp_worker(args.steps)
        return
    import logging

    log = logging.getLogger(__name__)
    quick = args.quick
    repeats = 2 if quick else 3
    results: dict = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "date": time.strftime("%Y-%m-%d"),
    }
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        log.info("bench: simulator")
        results["simulator"] = bench_simulator(tmp, 1000 if quick else 4000)
        jets = _toy_store(256 if quick else 1024)
        log.info("bench: supervised loop against the bare step")
        results["supervised"] = bench_supervised(jets, 10 if quick else 200)
        log.info("bench: Barlow Twins loop against the bare step")
        results["barlow_twins"] = bench_ssl(jets, 10 if quick else 100)
        log.info("bench: channels-last")
        results["channels_last"] = bench_channels_last(repeats)
        log.info("bench: data path against a naive loader")
        results["data_path"] = bench_data_path(tmp, 512 if quick else 2048, repeats)
        log.info("bench: torchrun 1 against 2 processes")
        results["ddp"] = bench_ddp(3 if quick else 8)
        log.info("bench: streamed pass over a file larger than the memory budget")
        results["streaming"] = bench_streaming(tmp, 1500 if quick else 6000)
    out = Path(args.out)
    from e2essl.data.writers import write_json, write_text

    write_json(out.with_suffix(".json"), results)
    write_text(out, render(results))
    print(render(results))
