"""`ssc` (also `surgeserve-client`, and the server's `surgeserve submit` / `surgeserve job`):
bulk jobs from the command line.

    ssc submit reviews.csv --column text --id-column id --wait --out results.csv
    ssc list ; ssc status ID ; ssc wait ID ; ssc results ID --out r.ndjson ; ssc cancel ID

An interrupted `submit --out F` or `results --out F` resumes when run again with the same
arguments: the jobs already made are reused (no second job) and the download continues
from the last row written (the state lives in `F.ssc.json` until the download is complete).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import httpx

from surgeserve_client.client import Client
from surgeserve_client.errors import ApiError, InputError
from surgeserve_client.inputs import FORMATS, detect_format, read_items
from surgeserve_client.outputs import OUTPUT_FORMATS, State, output_format, state_path
from surgeserve_client.plan import Submission
from surgeserve_client.retry import RetryPolicy

SHOW_SKIPPED = 20


def _client(args: argparse.Namespace) -> Client:
    return Client(args.url, api_key=args.api_key, timeout=args.timeout,
                  retry=RetryPolicy(attempts=max(1, args.retries + 1)), on_retry=_retrying)


def _retrying(attempt: int, delay: float, reason: str) -> None:
    _say(f"{reason}: retry {attempt} in {delay:.1f} s")


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def _source(args: argparse.Namespace) -> dict[str, Any]:
    """The input file and how it is read: a resume must find the same."""
    path = Path(args.file).resolve()
    if not path.is_file():
        raise InputError(f"{args.file}: no such file")
    stat = path.stat()
    return {"path": str(path), "format": args.input_format or detect_format(path),
            "column": args.column, "id_column": args.id_column, "model": args.model,
            "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _items(source: dict[str, Any]) -> Any:
    return read_items(source["path"], fmt=source["format"], column=source["column"],
                      id_column=source["id_column"])


def _unchanged(source: dict[str, Any] | None) -> bool:
    if not source:
        return False
    try:
        stat = Path(source["path"]).stat()
    except OSError:
        return False
    return (stat.st_size, stat.st_mtime_ns) == (source["size"], source["mtime_ns"])


def cmd_submit(args: argparse.Namespace) -> int:
    """Submit a file; with --wait, follow progress and download the results."""
    source = _source(args)
    out = Path(args.out) if args.out else None
    fmt = output_format(out, args.format)
    state = State.load(out) if out is not None else None
    if state is not None and state.source == source:
        _say(f"resuming (state in {state_path(out or '')}): "
             f"{len(state.submission.parts)} job(s) already made")
    else:
        if state is not None:
            _say(f"{state_path(out or '')} is from another input: starting afresh")
        key = args.idempotency_key
        sub = Submission(key=key, model=args.model) if key else Submission(model=args.model)
        state = State(sub, fmt, args.with_text, source=source)
    with _client(args) as client:
        if not state.submission.complete:
            save = (lambda _: state.save(out)) if out is not None else None
            client.submit(_items(source), submission=state.submission, on_part=save)
        sub = state.submission
        _report(sub)
        if not args.wait:
            for job_id in sub.job_ids:
                print(job_id)
            return 0
        if not sub.parts:
            _say("nothing to send: every item was skipped")
        elif not _finished_ok(client.wait(sub, progress=not args.no_progress)):
            return 1
        rows = client.download(sub, out, fmt=fmt, with_text=args.with_text,
                               inputs=_items(source), progress=not args.no_progress,
                               state=state if out is not None else None)
        _say(f"{rows} rows" + (f" in {out}" if out else ""))
    return 0


def _report(sub: Submission) -> None:
    """The jobs made and the items not sent (each at its line)."""
    _say(f"{sub.sent} items in {len(sub.parts)} job(s): {' '.join(sub.job_ids)}")
    for skipped in sub.skipped[:SHOW_SKIPPED]:
        where = f"line {skipped.line}" if skipped.line is not None else f"item {skipped.index}"
        _say(f"  {where}: not sent ({skipped.code}: {skipped.message})")
    if len(sub.skipped) > SHOW_SKIPPED:
        _say(f"  ... and {len(sub.skipped) - SHOW_SKIPPED} more")
    if sub.skipped:
        _say(f"{len(sub.skipped)} item(s) not sent: each is an error row at its place")


def _finished_ok(jobs: list[Any]) -> bool:
    bad = [j for j in jobs if j.status != "succeeded"]
    for job in bad:
        _say(f"job {job.id} ended {job.status}" + (f": {job.error}" if job.error else ""))
    return not bad


def cmd_results(args: argparse.Namespace) -> int:
    """Download results (several jobs: merged in the order given)."""
    out = Path(args.out) if args.out else None
    state = State.load(out) if out is not None else None
    if args.ids:
        target: Any = list(args.ids)
        if state is not None and state.submission.job_ids != target:
            state = None
    elif state is not None:
        target = state.submission
    else:
        raise InputError("name the job id(s), or --out of an interrupted submit or download")
    fmt = args.format or (state.format if state else None)
    with_text = args.with_text or bool(state and state.with_text)
    source = state.source if state is not None and _unchanged(state.source) else None
    if with_text and source is None:
        _say("--with-text: the input file is not known (or changed): texts left empty")
    with _client(args) as client:
        rows = client.download(target, out, fmt=fmt, with_text=with_text,
                               inputs=_items(source) if source else None,
                               progress=not args.no_progress, state=state)
    _say(f"{rows} rows" + (f" in {out}" if out else ""))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Print a job's status as JSON."""
    with _client(args) as client:
        print(json.dumps(dataclasses.asdict(client.job(args.id)), indent=2))
    return 0


def cmd_wait(args: argparse.Namespace) -> int:
    """Follow jobs until they end; non-zero unless all succeeded."""
    with _client(args) as client:
        jobs = client.wait(list(args.ids), progress=not args.no_progress)
    for job in jobs:
        print(f"{job.id} {job.status} {job.done}/{job.total}")
    return 0 if _finished_ok(jobs) else 1


def cmd_cancel(args: argparse.Namespace) -> int:
    """Cancel jobs."""
    with _client(args) as client:
        for job_id in args.ids:
            job = client.cancel(job_id)
            print(f"{job.id} {job.status} {job.done}/{job.total}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """The caller's jobs, newest first."""
    with _client(args) as client:
        page = client.jobs(limit=args.limit, offset=args.offset)
    if args.json:
        for job in page.jobs:
            print(json.dumps(dataclasses.asdict(job)))
    else:
        print(f"{'ID':<24} {'STATUS':<10} {'DONE/TOTAL':>15}  {'CREATED':<20} MODEL")
        for job in page.jobs:
            print(f"{job.id:<24} {job.status:<10} {f'{job.done}/{job.total}':>15}  "
                  f"{job.created_at or '':<20} {job.model or ''}")
    if page.next_offset is not None:
        _say(f"more: ssc list --offset {page.next_offset}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Classify texts (one request; more than the server's bulk limit: several)."""
    with _client(args) as client:
        if len(args.texts) == 1:
            predictions = [client.predict(args.texts[0], args.model)]
        else:
            predictions = client.predict_many(args.texts, args.model)
    for text, prediction in zip(args.texts, predictions):
        print(json.dumps({"text": text, "label": prediction.label,
                          "score": prediction.score}, ensure_ascii=False))
    return 0


def cmd_limits(args: argparse.Namespace) -> int:
    """The server's limits."""
    with _client(args) as client:
        print(json.dumps(dataclasses.asdict(client.limits()), indent=2))
    return 0


def _common(prog: str) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=None,
                        help="API base URL (default $SURGE_URL, else http://127.0.0.1:8080)")
    common.add_argument("--api-key", default=None, help="API key (default $SURGE_API_KEY)")
    common.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    common.add_argument("--retries", type=int, default=7,
                        help="retries of a call on 429/502/503/504 (honouring Retry-After) "
                        "and on connection errors, with jittered backoff (default 7)")
    common.add_argument("--no-progress", action="store_true", help="no progress bars")
    return common


def _output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", help="results file (default stdout); resumable")
    parser.add_argument("--format", choices=OUTPUT_FORMATS, default=None,
                        help="results format (default: from --out's suffix, else ndjson)")
    parser.add_argument("--with-text", action="store_true", help="add each input text")


def build_parser(prog: str = "ssc") -> argparse.ArgumentParser:
    """The argument parser (public for tests and docs)."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    common = [_common(prog)]

    submit = sub.add_parser("submit", parents=common, help="submit a txt / csv / jsonl file")
    submit.add_argument("file")
    submit.add_argument("--column", default="text", help="CSV column / JSON field of the text")
    submit.add_argument("--id-column", default=None,
                        help="CSV column / JSON field of each item's id (JSON default: id)")
    submit.add_argument("--input-format", choices=FORMATS, default=None,
                        help="default: from the file name (.csv, .jsonl/.ndjson; else txt)")
    submit.add_argument("--model", default=None, help="a model name (default model if unset)")
    submit.add_argument("--wait", action="store_true", help="follow progress, then download")
    submit.add_argument("--idempotency-key", default=None,
                        help="a key of your own (default: a fresh one, saved for resumes)")
    _output_options(submit)
    submit.set_defaults(func=cmd_submit)

    results = sub.add_parser("results", aliases=["download"], parents=common,
                             help="download results (several ids: merged in that order)")
    ids_help = "job ids (one that starts with '-', from an older server, goes after --)"
    results.add_argument("ids", nargs="*", metavar="ID", help=ids_help)
    _output_options(results)
    results.set_defaults(func=cmd_results)

    for name, func, text in (("wait", cmd_wait, "follow jobs until they end"),
                             ("cancel", cmd_cancel, "cancel jobs")):
        cmd = sub.add_parser(name, parents=common, help=text)
        cmd.add_argument("ids", nargs="+", metavar="ID", help=ids_help)
        cmd.set_defaults(func=func)

    status = sub.add_parser("status", parents=common, help="a job's status (JSON)")
    status.add_argument("id")
    status.set_defaults(func=cmd_status)

    listing = sub.add_parser("list", parents=common, help="your jobs, newest first")
    listing.add_argument("--limit", type=int, default=20)
    listing.add_argument("--offset", type=int, default=0)
    listing.add_argument("--json", action="store_true", help="one JSON object per job")
    listing.set_defaults(func=cmd_list)

    predict = sub.add_parser("predict", parents=common, help="classify texts now")
    predict.add_argument("texts", nargs="+", metavar="TEXT")
    predict.add_argument("--model", default=None)
    predict.set_defaults(func=cmd_predict)

    limits = sub.add_parser("limits", parents=common, help="the server's limits")
    limits.set_defaults(func=cmd_limits)
    return parser


def main(argv: list[str] | None = None, prog: str = "ssc") -> int:
    """Entry point of `ssc` (and of the server's `surgeserve submit` / `surgeserve job`)."""
    args = build_parser(prog).parse_args(argv)
    try:
        return int(args.func(args))
    except InputError as exc:
        _say(f"{prog}: {exc}")
        return 2
    except ApiError as exc:
        _say(f"{prog}: {exc}" + (f" {json.dumps(exc.detail)}" if exc.detail else ""))
        return 1
    except httpx.TransportError as exc:
        _say(f"{prog}: cannot reach the API ({type(exc).__name__}: {exc})")
        return 1
    except KeyboardInterrupt:
        out = getattr(args, "out", None)
        if out and state_path(out).exists():
            _say(f"interrupted: run the same command again to resume ({state_path(out)})")
        return 130
