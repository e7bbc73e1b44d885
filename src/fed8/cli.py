"""The ``fed8`` command: argument parsing and printing only; the work is in :mod:`fed8.stages`."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path
from typing import Sequence

from . import __version__
from ._process import (exit_status, output_closed, quiet_after_broken_pipe, set_process_env, stop_on_signals,
                       tune_malloc, wait_policy)
from ._terminal import bold_head, console, print_comparison, print_deploy, print_summary, progress_line
from .errors import CheckpointError, ConfigError, DataError, DeployError, Fed8Error, MissingExtraError, ParameterError

__all__ = ["main"]

EXIT_USAGE = 2
# Errors in what the user gave (config, data, run directory, model file, missing extra): exit 2.
USER_ERRORS = (ConfigError, DataError, CheckpointError, DeployError, MissingExtraError, ParameterError)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fed8", description="Federated training of vision models, shipped in 8 bits.")
    p.add_argument("--version", action="version", version=f"fed8 {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="train a global model federatedly, build and measure its 8-bit models on the "
                                   "clients (quantize stage), write the report")
    r.add_argument("config", nargs="?", help="TOML config (default: built-in defaults; see 'fed8 init')")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config key, e.g. --set train.rounds=30 (repeatable)")
    r.add_argument("--out", help="run directory (default: <run.out>/<time>-<model>-<data>)")
    r.add_argument("--resume", metavar="RUN_DIR", help="continue a run after its last completed round")
    r.add_argument("--no-report", action="store_true", help="skip report.html and plots")

    f = sub.add_parser("federation", help="the same run on Flower's deployment engine: a local SuperLink and "
                       "N SuperNodes on 127.0.0.1 (pip install 'fed8[flower]')")
    f.add_argument("config", nargs="?", help="TOML config (default: built-in defaults)")
    f.add_argument("--nodes", type=int, help="SuperNodes to start, one per client (default: data.num_clients)")
    f.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    f.add_argument("--out", help="run directory (default: <run.out>/<time>-<model>-<data>)")
    f.add_argument("--resume", metavar="RUN_DIR", help="continue a federation run after its last committed round")
    f.add_argument("--prepare", action="store_true",
                   help="only write the run directory and the Flower app, and print the flwr run command (real "
                        "machines: you start the SuperLink and SuperNodes)")
    f.add_argument("--tls", action="store_true", help="TLS between every process (a fresh CA and certificate)")
    f.add_argument("--auth", action="store_true",
                   help="SuperNode authentication (implies --tls): only registered node keys are admitted")

    i = sub.add_parser("init", help="write the default config with a comment on every key")
    i.add_argument("path", nargs="?", default="fed8.toml")
    i.add_argument("--force", action="store_true", help="overwrite an existing file")

    q = sub.add_parser("quantize", help="build INT8 / FP8 ONNX (and LiteRT INT8) models of a run directory or an ONNX "
                       "model")
    q.add_argument("target", metavar="RUN_DIR|MODEL.onnx")
    q.add_argument("--formats", help="comma-separated: int8,float8_e4m3fn,float8_e5m2 (ONNX), litert_int8,litert_fp32 "
                   "(.tflite, needs fed8[litert]), torch_float8_e4m3fn (FP8 Linear layers); the last three from a run "
                   "directory only")
    q.add_argument("--calibration", help="activation calibration: minmax | percentile | entropy")
    q.add_argument("--calibration-data", nargs="+", default=[], metavar="PATH",
                   help="images to calibrate on (.npz, folder, image files; for a model not exported by fed8: "
                        "an .npz of its own float inputs); required for MODEL.onnx, replaces federated calibration "
                        "for a run directory")
    q.add_argument("--out", help="output folder (default: RUN_DIR/deploy/, or MODEL-deploy/ next to MODEL.onnx)")
    q.add_argument("--set", dest="overrides", action="append", default=[], metavar="quantize.KEY=VALUE")

    pr = sub.add_parser("predict", help="top-k classes of images with a deployed ONNX model")
    pr.add_argument("model", metavar="MODEL.onnx")
    pr.add_argument("images", nargs="*", metavar="IMAGE", help="image files (png, jpg, ...) or an .npz")
    pr.add_argument("--folder", action="append", default=[], metavar="DIR", help="every image in DIR (repeatable)")
    pr.add_argument("--top-k", type=int, default=3, help="classes to print per image (default 3)")
    pr.add_argument("--json", action="store_true", help="print JSON lines instead of text")
    pr.add_argument("--runtime", choices=("onnxruntime", "openvino"), default="onnxruntime",
                    help="inference runtime (openvino: pip install 'fed8[openvino]')")

    sub.add_parser("info", help="versions, threads, datasets and models")

    rep = sub.add_parser("report", help="write report.html and plots for a run directory")
    rep.add_argument("run_dir")

    cmp = sub.add_parser("compare", help="run directories side by side: what differs in their configs, accuracy, "
                                         "bytes, epsilon, 8-bit accuracy; with --out, plots and compare.html")
    cmp.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    cmp.add_argument("--out", help="folder for compare.html, compare.json, accuracy.png and accuracy_vs_bytes.png")
    cmp.add_argument("--mean-over-seeds", action="store_true",
                     help="one column per group of runs that differ only in run.seed: mean +- standard deviation")

    c = sub.add_parser("certs", help="make a CA and a server certificate for a federation's TLS (SuperLink)")
    c.add_argument("dir", help="folder for ca.crt, ca.key, server.crt, server.key")
    c.add_argument("--host", dest="hosts", action="append", default=[], metavar="NAME|IP",
                   help="a name or address clients use to reach the SuperLink (repeatable; default localhost and "
                        "127.0.0.1)")
    c.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    c.add_argument("--nodes", type=int, default=0, metavar="N",
                   help="also write N SuperNode authentication key pairs node-<i>.key / node-<i>.pub")
    c.add_argument("--force", action="store_true", help="replace existing files")
    return p


def _cmd_init(args) -> int:
    from ._io import atomic_write_text
    from .config import to_toml

    path = Path(args.path)
    if path.is_dir():
        raise ConfigError(f"fed8 init PATH: {path} is a folder; give a file name, e.g. {path / 'fed8.toml'}.")
    if path.exists() and not args.force:
        print(f"fed8 init: {path} exists; pass --force to overwrite it.", file=sys.stderr)
        return EXIT_USAGE
    atomic_write_text(path, to_toml(None, comments=True))  # the declared defaults, "auto" kept
    print(f"wrote {path}; run it with: fed8 run {path}")
    return 0


def _cmd_info(args) -> int:
    import platform
    from dataclasses import fields

    import torch

    from .config import DataConfig

    def choices(cls, name):
        return ", ".join(next(f for f in fields(cls) if f.name == name).metadata["choices"])

    con = console()

    def say(line: str) -> None:  # one line per fact, never wrapped: fed8 info | grep finds it whole
        con.print(line, soft_wrap=True)

    say(f"fed8 {__version__}")
    say(f"python {platform.python_version()} ({platform.platform()})")
    say(f"torch {torch.__version__}; threads {torch.get_num_threads()} (cores {os.cpu_count()}); "
        f"cuda {'yes' if torch.cuda.is_available() else 'no'}")
    for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        p = torch.cuda.get_device_properties(i)
        say(f"gpu {i}: {p.name}, compute capability {p.major}.{p.minor}, {p.total_memory / 2**30:.0f} GiB")
    say("run.device = auto trains on " + ("cuda" if torch.cuda.is_available() else "the cpu"))
    say(f"OpenMP wait policy: {wait_policy()}")
    from .deploy.fp8_linear import fp8_compute_available

    ok, why = fp8_compute_available()
    say(f"FP8 compute (torch_float8_e4m3fn): {'yes, ' + why if ok else 'no: ' + why}")
    from ._device import native_bfloat16, resolve_device

    dev = resolve_device("auto")
    say(f"bfloat16 compute (train.precision = bfloat16) on the {dev.type}: "
        + ("native" if native_bfloat16(dev) else "emulated, slower than float32"))
    for mod in ("onnx", "onnxruntime", "openvino", "litert_torch", "ai_edge_litert", "flwr", "dp_accounting"):
        try:
            from importlib.metadata import version
            say(f"{mod} {version(mod.replace('_', '-'))}")
        except Exception:
            say(f"{mod} not installed")
    say(f"datasets: {choices(DataConfig, 'source')}")
    say(f"partitions: {choices(DataConfig, 'partition')}")
    from .models import MODELS

    say(f"models: {', '.join(MODELS)}, or your own as model.name = 'package.module:function'")
    return 0


def _cmd_run(args) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from .config import load_config
    from .stages.train import default_run_dir, run
    from .rundir import RunDir

    from .federated.distributed import init_group, world_from_env

    runner = run
    if world_from_env()[1] > 1:  # under torchrun: rank 0 is the run, the other ranks train clients
        from .stages.distributed import run_distributed, serve_worker

        if init_group()[0] != 0:
            serve_worker()
            return 0
        runner = run_distributed
    con = console()
    if args.resume:
        if args.config:
            raise ConfigError("pass either a CONFIG or --resume RUN_DIR, not both: a resumed run uses its own "
                              "config.toml (with --set for train.rounds and eval keys).")
        out = Path(args.resume)
        rd = RunDir.open(out)
        cfg = rd.load_config().replace(args.overrides)
        done = rd.read_metrics()  # a resumed run's bar starts where it stopped
    else:
        cfg = load_config(args.config, args.overrides)
        out = Path(args.out) if args.out else default_run_dir(cfg)
        done = []
    from .stages.aggregation import check_combination

    check_combination(cfg)  # a refused combination is said before a run directory is named
    con.print(bold_head("fed8 run", f"{cfg.model.name} on {cfg.data.source}: {cfg.data.num_clients} clients "
                                    f"({cfg.data.partition}), {cfg.train.rounds} rounds, run directory {out}"))
    if runner is not run:
        con.print(f"clients' training sharded over {world_from_env()[1]} ranks (torchrun; this is rank 0)")
    with Progress(TextColumn("round {task.completed:.0f}/{task.total:.0f}"), BarColumn(bar_width=8), TimeElapsedColumn(),
                  TextColumn("{task.description}", markup=False), console=con, transient=False) as bar:
        last = {"line": progress_line(done[-1]) if done else "preparing data and model"}
        task = bar.add_task(last["line"], total=cfg.train.rounds, completed=done[-1]["round"] if done else 0)

        def progress(row: dict) -> None:
            last["line"], last["moved"] = progress_line(row), True
            bar.update(task, completed=row["round"], description=last["line"])

        def stage(words: str) -> None:  # after the rounds: the quantize stage's steps, the report
            last["moved"] = True
            bar.update(task, description=words)

        try:
            result = runner(cfg, out=None if args.resume else out, resume=args.resume, overrides=args.overrides,
                            progress=progress, stage=stage, report=not args.no_report)
        except KeyboardInterrupt as e:
            bar.stop()
            con.print(f"\n{_stopped(e)}; {_what_was_kept(out, 'Continue with')}")
            return exit_status(e)
        except OSError as e:
            if e.errno not in DISK_FULL:
                raise
            bar.stop()
            raise Fed8Error(f"{_disk_full(e)}; {_what_was_kept(out, 'Free some space, then continue with')}") from None
        except Fed8Error:
            if not last.get("moved"):  # refused before any round (a config or data error): no bar above the error
                bar.update(task, visible=False)
                bar.live.transient = True  # rich erases a transient live display when it stops
            raise
        bar.update(task, description=last["line"])  # the line that stays: the last round's metrics
    print_summary(con, result.run_dir, result.summary, "fed8 run summary", report=not args.no_report)
    return 0


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _what_was_kept(out: Path, then: str) -> str:
    """A stopped run's state in words: its last round is saved (``then`` the resume command), or nothing was kept."""
    if (out / "config.toml").exists():  # a run that stops before round 1 removes its folder (RunDir.discard_if_no_round)
        return f"the last completed round is saved. {then}: fed8 run --resume {out}"
    return "it stopped before the first round completed; nothing was kept."


def _disk_full(e: OSError) -> str:
    where = f" writing {e.filename!r}" if getattr(e, "filename", None) else ""
    return f"the disk is full{where} ({e.strerror or e})"


def _stopped(interrupt: KeyboardInterrupt) -> str:
    """How the command was stopped, in words: Ctrl-C, or the signal (:class:`fed8._process.Terminated`)."""
    name = getattr(interrupt, "signame", None)
    return f"stopped by {name}" if name else "interrupted"


def _check_litert_asked(formats: str, is_model: bool) -> None:
    from .deploy.litert import LITERT_FORMATS, litert_available
    from .errors import DeployError, MissingExtraError

    from .deploy.fp8_linear import TORCH_FP8_FORMAT

    torch_built = [f.strip() for f in formats.split(",") if f.strip() in (*LITERT_FORMATS, TORCH_FP8_FORMAT)]
    if torch_built and is_model:
        raise DeployError(f"--formats {','.join(torch_built)}: these are built from the PyTorch model, which an ONNX "
                          "file does not carry (and no converter from ONNX to LiteRT is part of fed8). Quantize the run "
                          "directory that made the model: fed8 quantize RUN_DIR --formats " + ",".join(torch_built))
    asked = [f for f in torch_built if f in LITERT_FORMATS]
    if asked and not litert_available():
        raise MissingExtraError("litert-torch", "litert")


def _cmd_quantize(args) -> int:
    from dataclasses import replace

    from .config import Config
    from .stages.quantize import quantize_model, quantize_run
    from .rundir import RunDir

    target = Path(args.target)
    is_model = target.is_file()
    cfg = Config() if is_model else RunDir.open(target).load_config()
    extra = list(args.overrides)
    if args.formats:
        extra.append(f'quantize.formats="{args.formats}"')
    if args.calibration:
        extra.append(f"quantize.calibration={args.calibration}")
    bad = [o for o in extra if not o.startswith("quantize.")]
    if bad:
        raise ConfigError(f"fed8 quantize takes only quantize.* keys; got {bad[0]!r}.")
    q = replace(cfg.replace(extra).quantize, enabled=True)
    if args.formats:  # asked for by name here, not just listed in a config: an error, not a skipped note
        _check_litert_asked(args.formats, is_model)
    con = console()
    say = lambda s: con.print(s, style="dim")  # noqa: E731
    if is_model:
        out = Path(args.out) if args.out else target.parent / f"{target.stem}-deploy"
        res = quantize_model(target, q, args.calibration_data, out=out, progress=say)
        print_deploy(con, res, out / "quantization.json")
    else:
        out = Path(args.out) if args.out else target / "deploy"
        with RunDir(target).lock("fed8 quantize"):  # it updates summary.json: not beside a run still training
            res = quantize_run(target, q, calibration_data=args.calibration_data, out=out, progress=say)
        print_deploy(con, res, out / "quantization.json")
        if out.resolve() == (target / "deploy").resolve():
            con.print(f"updated {target / 'summary.json'}" + (" and report.html" if (target / "report.html").exists()
                                                                else ""), soft_wrap=True)
    return 0


def _cmd_predict(args) -> int:
    import json

    from .deploy.predict import predict

    paths = list(args.images) + list(args.folder)
    if not paths:
        raise ConfigError("fed8 predict needs images: give IMAGE... or --folder DIR.")
    if args.top_k < 1:
        raise ConfigError(f"--top-k must be >= 1; got {args.top_k}.")
    for r in predict(args.model, paths, top_k=args.top_k, runtime=args.runtime):
        if args.json:
            print(json.dumps(r))
        else:
            print(f"{r['image']}: " + ", ".join(f"{c} {p:.3f}" for c, p in r["top"]))
    return 0


def _cmd_report(args) -> int:
    from .report import write_report

    path = write_report(args.run_dir)
    print(f"wrote {path}")
    return 0


def _cmd_compare(args) -> int:
    from .report.compare import comparison, load_run, seed_groups, write_comparison

    runs = [load_run(p) for p in args.run_dirs]
    rows = comparison(runs)
    con = console()
    print_comparison(con, rows, seed_groups(rows) if args.mean_over_seeds else None)
    if args.out:
        written = write_comparison(runs, args.out, over_seeds=args.mean_over_seeds)
        con.print(f"wrote {written[-1]} (and {', '.join(p.name for p in written[:-1])})")
    else:
        con.print("add --out DIR for the plots (accuracy per round, accuracy against bytes sent) and compare.html")
    return 0


def _cmd_federation(args) -> int:
    from .config import load_config
    from .flower import require_flwr
    from .rundir import RunDir
    from .stages.distributed import refuse_flower_under_torchrun
    from .stages.train import default_run_dir

    refuse_flower_under_torchrun()

    require_flwr()
    con = console()
    if args.resume:
        if args.config:
            raise ConfigError("pass either a CONFIG or --resume RUN_DIR, not both.")
        rd = RunDir.open(args.resume)
        cfg = rd.load_config()
    else:
        cfg = load_config(args.config, args.overrides)
    nodes = args.nodes or cfg.data.num_clients
    if nodes != cfg.data.num_clients:
        raise ConfigError(f"--nodes {nodes} differs from data.num_clients = {cfg.data.num_clients}: a local "
                          f"federation runs one SuperNode per client. Pass --set data.num_clients={nodes} or --nodes "
                          f"{cfg.data.num_clients}.")
    if cfg.privacy.secagg_dropout:
        raise ConfigError(f"fed8 federation does not take privacy.secagg_dropout = {cfg.privacy.secagg_dropout}: on "
                          "real nodes dropouts happen (a node that misses a stage's deadline drops out); the simulated "
                          "dropout is for fed8 run. Set it to 0.")
    if cfg.federation.min_replies > cfg.data.num_clients:
        raise ConfigError(f"federation.min_replies = {cfg.federation.min_replies} is above data.num_clients = "
                          f"{cfg.data.num_clients}: no round could ever be aggregated. Use a value <= "
                          f"{cfg.data.num_clients}.")
    if not args.resume:
        from .data import refuse_unread_keys

        refuse_unread_keys(cfg.data)
        rd = RunDir.create(Path(args.out) if args.out else default_run_dir(cfg), cfg)
    from .flower.launcher import run_federation, write_app

    if args.prepare:
        app = write_app(rd.path)
        con.print(f"run directory {rd.path} and Flower app {app} written. With your SuperLink and SuperNodes up "
                  f"(README: On real machines), submit from the SuperLink's machine:\n  flwr run {app} CONNECTION "
                  f"--run-config \"run-dir='{rd.path.resolve()}'\"\nand continue an interrupted run with the same "
                  "command.", soft_wrap=True)
        return 0
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    con.print(bold_head("fed8 federation", f"{cfg.model.name} on {cfg.data.source}: {nodes} SuperNodes on "
                                           f"127.0.0.1, {cfg.train.rounds} rounds, run directory {rd.path}"))
    with Progress(TextColumn("round {task.completed:.0f}/{task.total:.0f}"), BarColumn(bar_width=8),
                  TimeElapsedColumn(), TextColumn("{task.description}", markup=False), console=con,
                  transient=False) as bar:
        rows = rd.read_metrics()
        task = bar.add_task("starting the SuperLink and SuperNodes" if not rows else "resuming",
                            total=cfg.train.rounds, completed=len(rows))
        last = {"line": progress_line(rows[-1]) if rows else None}

        def progress(row: dict) -> None:  # the same live line as fed8 run, from metrics.jsonl as rounds commit
            last["line"] = progress_line(row)
            bar.update(task, completed=row["round"], description=last["line"])

        def stage(words: str) -> None:  # the ServerApp's steps after the rounds: the report, the quantize stage
            bar.update(task, description=words)

        try:
            run_federation(rd.path, nodes, tls=args.tls, auth=args.auth, progress=progress, stage=stage)
        except KeyboardInterrupt as e:
            bar.stop()
            con.print(f"\n{_stopped(e)}; the SuperLink and SuperNodes are stopped and the last committed round is "
                      f"saved. Continue with: fed8 federation --resume {rd.path}", soft_wrap=True)
            return exit_status(e)
        if last["line"] is not None:
            bar.update(task, description=last["line"])  # the line that stays: the last round's metrics
    import json

    print_summary(con, rd.path, json.loads(rd.summary.read_text()), "fed8 federation summary",
                   report=rd.report.exists())
    return 0


def _cmd_certs(args) -> int:
    from .certs import make_certificates

    paths = make_certificates(args.dir, args.hosts or ["localhost", "127.0.0.1"], days=args.days, force=args.force)
    d = Path(args.dir)
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    print(f"SuperLink:  flower-superlink --ssl-ca-certfile {d / 'ca.crt'} --ssl-certfile {d / 'server.crt'} "
          f"--ssl-keyfile {d / 'server.key'}")
    print(f"SuperNodes: flower-supernode --root-certificates {d / 'ca.crt'} --superlink HOST:PORT ...  "
          "(copy ca.crt to every node; keep ca.key and server.key private)")
    if args.nodes:
        from .certs import make_node_keys

        pairs = make_node_keys(d, args.nodes, force=args.force)
        print(f"wrote {len(pairs)} SuperNode key pairs {pairs[0][0].name}/.pub ... {pairs[-1][0].name}/.pub")
        print("Authentication: flower-superlink ... --enable-supernode-auth; register each node's public key with "
              f"flwr supernode register {d / 'node-0.pub'} CONNECTION; start node i with flower-supernode ... "
              f"--auth-supernode-private-key {d / 'node-<i>.key'} (copy only its own key to each node)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    # Before any handler imports torch (libgomp reads its wait policy once, when torch loads it): this
    # process's malloc thresholds (unless the user set them), then the environment its children inherit.
    tune_malloc()
    set_process_env()
    args = _parser().parse_args(argv)
    handlers = {"run": _cmd_run, "init": _cmd_init, "info": _cmd_info, "report": _cmd_report, "compare": _cmd_compare,
                "quantize": _cmd_quantize, "predict": _cmd_predict, "certs": _cmd_certs,
                "federation": _cmd_federation}
    # SIGTERM / SIGHUP stop a command as Ctrl-C does: Flower processes stopped, the resume hint printed
    with stop_on_signals():
        try:
            return handlers[args.command](args)
        except KeyboardInterrupt as e:  # run and federation print how to continue; the others one line, no traceback
            print(f"fed8 {args.command}: {_stopped(e)}", file=sys.stderr)
            return exit_status(e)
        except USER_ERRORS as e:
            print(f"fed8 {args.command}: error: {e}", file=sys.stderr)
            return EXIT_USAGE
        except Fed8Error as e:
            print(f"fed8 {args.command}: error: {e}", file=sys.stderr)
            return 1
        except OSError as e:  # a path the user gave: a file where a folder is needed, no permission; a full disk
            if isinstance(e, BrokenPipeError) and output_closed():  # our reader stopped reading (| head): as cat does
                return quiet_after_broken_pipe()
            if e.errno in DISK_FULL:
                print(f"fed8 {args.command}: error: {_disk_full(e)}. Free some space and run the command again.",
                      file=sys.stderr)
                return 1
            where = f" {e.filename!r}" if getattr(e, "filename", None) else ""
            print(f"fed8 {args.command}: error: cannot use{where}: {e.strerror or e}. Check the paths you passed "
                  "(--out, run.out, the config file, image files).", file=sys.stderr)
            return EXIT_USAGE
        except (MemoryError, RuntimeError) as e:
            if isinstance(e, RuntimeError) and "allocate" not in str(e):  # torch's allocator: "can't allocate memory"
                raise
            print(f"fed8 {args.command}: error: out of memory. A value asks for more than this machine has (e.g. "
                  "model.hidden, data.image_size, eval.batch_size, train.batch_size); lower it.", file=sys.stderr)
            return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
