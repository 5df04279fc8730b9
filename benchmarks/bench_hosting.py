"""The cost of hosting: GQA-style programs in-process versus through Ray Serve.

Loc and Vqa (the model modules of the programs) run either in this process or on Ray Serve
deployments of a local Ray instance that this script starts (one replica each). The same
programs run two ways each:

- sequential: `VisProg.execute`, one program after another (each model step is one request);
- batched: `VisProg.run_batch` (steps of many programs sent together; through Ray Serve each
  group of calls is a request, and the replica's `@serve.batch` coalesces requests again).

Both hosts exist side by side: Ray starts first (as `visprog serve` starts a local one),
everything runs once untimed (models loaded, replicas warm), then in each timed repetition
the two hosts take turns, so that a shared machine's changing load falls on both alike: the
sequential programs in slices of `--slice` (each slice in one host, then the other, the
first host alternating), the batched run whole (the first host alternating between
repetitions). The step cache is off. The values of the two hosts are checked to be identical.
Printed: programs/s for each mode and host (over all repetitions), hosted as a share of
in-process (and each repetition's share), the overhead per program and per model step, where
a hosted request's time goes (`--profile`: the client's encoding, waiting and decoding, the
replica's batch queue, decoding, module run and encoding, the rest: routing and transfer;
and the module's own time per call in each host), and the replicas' batch counts.

    python benchmarks/bench_hosting.py                              # tiny preset, CPU
    python benchmarks/bench_hosting.py --profile                    # + where the time goes
    python benchmarks/bench_hosting.py --full --device cuda         # the default preset's
                                                                    # full-size Loc and Vqa
    python benchmarks/bench_hosting.py --smoke                      # seconds (the tests; Ray)

`--full` uses the full-size architectures built with random weights by
benchmarks/bench_batch.py (`--preset classic`: GroundingDINO and BLIP); on CUDA each replica
gets `--gpu-fraction` of the GPU. The exit status is 1 when sequential values differ.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_batch import TEMPLATES as BATCH_TEMPLATES, CallCounter, make_images  # noqa: E402

# bench_batch's programs, but the first counts only (its Vqa question repeats the third's)
TEMPLATES = [
    "BOX0=Loc(image=IMAGE, object='car')\nN=Count(box=BOX0)\n"
    "FINAL=Eval(expr=\"'yes' if {N} > 0 else 'no'\")",
    *BATCH_TEMPLATES[1:],
]
HOSTED = ("Loc", "Vqa")
MODES = ("sequential", "batched")


def workload(n_programs: int, n_images: int, size: tuple[int, int]) -> list[dict]:
    images = make_images(n_images, size)
    return [{"program": TEMPLATES[i % len(TEMPLATES)], "image": images[(i // len(TEMPLATES))
                                                                      % n_images], "id": i}
            for i in range(n_programs)]


def run_mode(vp: Any, mode: str, items: list[dict], batch_size: Any) -> tuple[float, list]:
    """(seconds, values) of one run of the items."""
    t = time.perf_counter()
    if mode == "sequential":
        values = [vp.execute(it["program"], image=it["image"]).value for it in items]
    else:
        results = vp.run_batch(items, batch_size=batch_size)
        bad = [r for r in results if not r.ok]
        if bad:
            raise RuntimeError(f"{len(bad)} programs failed: {bad[0].error}")
        values = [r.value for r in results]
    return time.perf_counter() - t, values


def model_steps(items: list[dict]) -> int:
    return sum(sum(line.split("=", 1)[1].startswith(HOSTED) for line in it["program"].splitlines())
               for it in items)


def snapshot(clients: dict) -> dict:
    """What each hosted module's client and replica counted so far."""
    out = {}
    for m, c in clients.items():
        replica = c.stats()
        out[m] = {"requests": c.requests, "client": dict(getattr(c, "seconds", {})),
                  "replica": replica}
    return out


def breakdown(before: dict, after: dict) -> dict:
    """Seconds per request of each stage between two snapshots, per hosted module.

    The client's `wait` is the round trip; what the replica does not account for in it
    (its queue, decoding, run, encoding) is routing and transfer. In the batched mode a
    client's requests overlap, so there the remainder is a lower bound."""
    out = {}
    for m in after:
        requests = after[m]["requests"] - before[m]["requests"]
        if not requests:
            continue
        client = {k: v - before[m]["client"].get(k, 0.0) for k, v in after[m]["client"].items()}
        rs_after, rs_before = after[m]["replica"].get("seconds"), before[m]["replica"].get("seconds")
        replica = ({k: v - rs_before.get(k, 0.0) for k, v in rs_after.items()}
                   if rs_after and rs_before is not None else {})
        calls = after[m]["replica"]["calls"] - before[m]["replica"]["calls"]
        row = {"calls": calls}
        row.update({f"client_{k}_ms": 1000 * v / requests for k, v in client.items()})
        row.update({f"replica_{k}_ms": 1000 * v / requests for k, v in replica.items()})
        if "wait" in client and replica:
            row["routing_transfer_ms"] = 1000 * (client["wait"] - sum(replica.values())) / requests
        if "run" in replica and calls:
            row["replica_run_ms_per_call"] = 1000 * replica["run"] / calls
        out[m] = {"requests": requests, **{k: round(v, 2) for k, v in row.items()}}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--programs", type=int, default=64)
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--image-size", default="640x480", help="WxH")
    p.add_argument("--reps", type=int, default=3,
                   help="timed repetitions (median); each runs both hosts back to back")
    p.add_argument("--batch-size", default="16", help="run_batch batch size, or auto")
    p.add_argument("--slice", type=int, default=8,
                   help="sequential mode: programs run in one host before the other runs them")
    p.add_argument("--max-batch-size", type=int, default=16, help="Serve batch size")
    p.add_argument("--batch-wait", type=float, default=0.005, help="Serve batch wait (s)")
    p.add_argument("--full", action="store_true",
                   help="full-size Loc and Vqa of --preset (random weights)")
    p.add_argument("--preset", default="default", help="with --full: default or classic")
    p.add_argument("--device", default="cpu", help="cpu or cuda (models in both hosts)")
    p.add_argument("--gpu-fraction", type=float, default=0.0,
                   help="GPU per replica (default: 0.4 on cuda)")
    p.add_argument("--num-cpus", type=float, default=None, help="CPUs of the local Ray")
    p.add_argument("--worker-niceness", type=int, default=None,
                   help="the replicas' niceness (default: as `visprog serve` starts Ray, 0; "
                        "Ray's own default is 15)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads in this process on CPU; each replica gets one CPU, so "
                        "Ray gives it one thread too (a fair comparison)")
    p.add_argument("--profile", action="store_true",
                   help="where a hosted request's time goes (client, replica, routing)")
    p.add_argument("--smoke", action="store_true",
                   help="8 programs over 2 small images, one repetition (checks that the "
                        "benchmark runs; figures meaningless)")
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "visprog-bench"),
                   help="folder for --full checkpoints")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args(argv)
    if args.smoke:
        args.programs, args.images, args.image_size, args.reps = 8, 2, "160x120", 1
        args.slice = 4
        args.full, args.profile = False, True

    import ray
    import torch

    from visprog.api import VisProg
    from visprog.config import module_catalog
    from visprog.hosting.client import client_of
    from visprog.hosting.serve import deploy

    w, h = (int(v) for v in args.image_size.lower().split("x"))
    items = workload(args.programs, args.images, (w, h))
    batch_size = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
    cuda = args.device.startswith("cuda")
    if not cuda:
        torch.set_num_threads(args.threads)
    preset = args.preset if args.full else "tiny"
    config: dict = {"models": {"device": args.device, "half": cuda}}
    if not cuda:  # the replicas too: the same thread count gives the same floats
        config["models"]["cpu_threads"] = args.threads
    if args.full:
        from bench_batch import calibrate_loc, full_size_config

        config.update(full_size_config(args.preset, Path(args.work), 800 if cuda else 224))
        threshold = calibrate_loc(preset, config, make_images(1, (w, h))[0])
        config["Loc"] = {**config["Loc"], "box_threshold": threshold, "text_threshold": 0.0}
    gpu = args.gpu_fraction or (0.4 if cuda else 0.0)
    hosted = {m: {**config.get(m, {}), "host": "ray", "replicas": 1, "gpu_fraction": gpu,
                  "num_cpus": 1, "max_batch_size": args.max_batch_size,
                  "batch_wait_s": args.batch_wait, "timeout_s": 600} for m in HOSTED}
    hosted_config = {**config, **hosted}

    print(f"workload: {len(items)} programs over {args.images} images {w}x{h}, "
          f"{model_steps(items)} model steps; preset {preset}"
          f"{' (full-size random)' if args.full else ''}, device {args.device}; "
          f"{args.reps} repetition(s), the two hosts taking turns")
    local = VisProg(preset=preset, cache=False, plugins=False, config=config)
    counter = CallCounter()  # the in-process modules' own time, to set beside the replicas'
    for m in HOSTED:
        local.register(counter.wrap(local.registry.get(m)), replace=True)
    t = time.perf_counter()
    num_cpus = args.num_cpus or max(2, os.cpu_count() or 2)
    try:  # as `visprog serve` starts a local Ray (replicas at normal priority)
        from visprog.hosting.serve import start_local_ray
    except ImportError:  # an older visprog (a before/after comparison): Ray's defaults
        start_local_ray = None
    if start_local_ray is None or args.worker_niceness is not None:
        niceness = ({} if args.worker_niceness is None
                    else {"_system_config": {"worker_niceness": args.worker_niceness}})
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False,
                 num_cpus=num_cpus, **niceness)
    else:
        start_local_ray(num_cpus, configure_logging=False)
    try:
        deploy(VisProg(preset=preset, cache=False, plugins=False, config=hosted_config).config,
               module_catalog())
        startup = time.perf_counter() - t
        remote = VisProg(preset=preset, cache=False, plugins=False, config=hosted_config)
        clients = {m: client_of(remote.registry.get(m)) for m in HOSTED}
        hosts = {"in_process": local, "ray": remote}
        for mode in MODES:  # warm: models loaded, replicas warm, libraries imported
            for vp in hosts.values():
                run_mode(vp, mode, items, batch_size)
        times: dict = {(host, mode): [] for host in hosts for mode in MODES}
        batches: dict = {}
        in_module: dict = {}
        values: dict = {}
        profile: dict = {}
        for rep in range(args.reps):
            for mode in MODES:
                # Sequential programs run in slices, each slice in one host and then the
                # other (the first host alternating), so that a shared machine's changing
                # load falls on both alike; a batched run is one run_batch of all of them.
                size = args.slice if mode == "sequential" else len(items)
                chunks = [items[i:i + size] for i in range(0, len(items), size)]
                spent = {host: 0.0 for host in hosts}
                got: dict = {host: [] for host in hosts}
                before = snapshot(clients)
                counter.reset()
                for k, chunk in enumerate(chunks):
                    order = list(hosts) if (rep + k) % 2 == 0 else list(hosts)[::-1]
                    for host in order:
                        seconds, chunk_values = run_mode(hosts[host], mode, chunk, batch_size)
                        spent[host] += seconds
                        got[host] += chunk_values
                after = snapshot(clients)
                for host in hosts:
                    times[host, mode].append(spent[host])
                    values[host, mode] = got[host]
                profile[mode] = breakdown(before, after)
                in_module[mode] = {m: {"calls": counter.items.get(m, 0),
                                       "ms_per_call": round(1000 * counter.seconds.get(m, 0.0)
                                                            / max(1, counter.items.get(m, 0)), 2)}
                                   for m in HOSTED}
                if mode == "batched":
                    batches = {m: after[m]["replica"]["batch_sizes"][
                        len(before[m]["replica"]["batch_sizes"]):] for m in HOSTED}
    finally:
        ray.shutdown()

    def differ(a: list, b: list) -> int:
        return sum(x != y for x, y in zip(a, b))

    # Sequential requests reach a replica one at a time, as in-process calls do: same values.
    # Batched ones are grouped by arrival on the replica, not as run_batch groups them; on a
    # GPU in fp16 a different batch (other padding, other kernels) can move a score across a
    # threshold of these random-weight models, as batching alone does in-process.
    diffs = {mode: differ(values["in_process", mode], values["ray", mode]) for mode in MODES}
    diffs["in_process_batched_vs_sequential"] = differ(values["in_process", "sequential"],
                                                       values["in_process", "batched"])
    same = diffs["sequential"] == 0 and diffs["batched"] == 0
    n, steps = len(items), model_steps(items)
    figures = {"programs": n, "model_steps": steps, "preset": preset, "full": args.full,
               "device": args.device, "reps": args.reps, "ray_startup_s": round(startup, 2),
               "identical_values": same, "values_differing": diffs, "modes": {},
               "profile_ms_per_request": profile, "in_process_module": in_module}
    print(f"\nRay start + deploy (replicas warm up): {startup:.1f} s; values identical: {same}")
    print(f"values differing from in-process, of {n}: sequential {diffs['sequential']}, "
          f"batched {diffs['batched']} (in-process batched vs sequential: "
          f"{diffs['in_process_batched_vs_sequential']})")
    print(f"{'mode':<11}{'in-process':>16}{'Ray Serve':>16}{'hosted/in':>11}{'overhead':>14}"
          f"{'per step':>14}   (all {args.reps} repetitions; each repetition's ratio)")
    for mode in MODES:
        # the repetitions' total time in each host (each ran under the same changing load)
        a = sum(times["in_process", mode]) / args.reps
        b = sum(times["ray", mode]) / args.reps
        pairs = [x / y for x, y in zip(times["in_process", mode], times["ray", mode])]
        per_prog, per_req = (b - a) / n * 1000, (b - a) / steps * 1000
        figures["modes"][mode] = {
            "in_process_s": round(a, 3), "ray_s": round(b, 3),
            "in_process_programs_per_s": round(n / a, 2), "ray_programs_per_s": round(n / b, 2),
            "hosted_share": round(a / b, 3), "hosted_share_per_rep": [round(x, 3) for x in pairs],
            "hosted_share_median_rep": round(statistics.median(pairs), 3),
            "overhead_ms_per_program": round(per_prog, 2),
            "overhead_ms_per_step": round(per_req, 2),
            "in_process_s_each": [round(x, 3) for x in times["in_process", mode]],
            "ray_s_each": [round(x, 3) for x in times["ray", mode]]}
        print(f"{mode:<11}{n / a:>10.2f} pr/s{n / b:>10.2f} pr/s{a / b:>10.0%}{per_prog:>9.1f} ms/pr"
              f"{per_req:>9.1f} ms/st   {' '.join(f'{x:.0%}' for x in pairs)}")
    for m in HOSTED:
        sizes = batches.get(m, [])
        figures[f"{m}_replica"] = {"batches_last_run": len(sizes), "calls_last_run": sum(sizes),
                                   "max_batch": max(sizes) if sizes else 0}
        print(f"{m} replica, last batched run: {sum(sizes)} calls in {len(sizes)} batches "
              f"(largest {max(sizes) if sizes else 0})")
    if args.profile:
        print("\nwhere a hosted request's time goes, ms per request (last repetition), and the "
              "module's own time per call in each host:")
        for mode in MODES:
            for m, row in profile.get(mode, {}).items():
                parts = ", ".join(f"{k.removesuffix('_ms')} {v:.1f}" for k, v in row.items()
                                  if k.endswith("_ms"))
                here = in_module.get(mode, {}).get(m, {})
                print(f"  {mode:<10} {m:<4} {row['requests']:>4} requests, {row['calls']} calls: "
                      f"{parts}\n{'':17}per call: in-process module "
                      f"{here.get('ms_per_call', float('nan')):.1f} ms, replica run "
                      f"{row.get('replica_run_ms_per_call', float('nan')):.1f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0 if diffs["sequential"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
