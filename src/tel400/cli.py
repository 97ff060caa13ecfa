"""The ``tel400`` command: check plans, route a call, locate a number, simulate traffic."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import sys
from collections.abc import Sequence

import structlog

from . import __version__, provinces
from .exceptions import BackendError, NumberError, PlanError, SegmentError
from .loading import load_plans
from .loglines import stderr_logger
from .numbers import locate, normalize, use_segments
from .pins import make_hash
from .plans import PlanSet
from .router import Router
from .segments import load_segments
from .simulate import simulate, week_grid
from .stores import JSONL_EXTENSIONS, FileStore, import_jsonl, open_store
from .workdays import describe_years


def _whole_plans(source: str) -> PlanSet:
    """Every number's plan, or exit 1 with the first error.

    Routers load per number (a bad one is quarantined, the others routed);
    a command that checks, imports or simulates plans wants all or nothing.
    """
    store = open_store(source, create=False)
    if isinstance(store, FileStore):
        return load_plans(store.path)
    plans = store.load()
    if store.quarantined:
        first = next(iter(store.quarantined.values()))
        more = len(store.quarantined) - 1
        raise PlanError(first + (f" (and {more} more numbers)" if more else ""))
    return plans


def _cmd_check(args) -> int:
    plans = _whole_plans(args.file)
    rules = sum(len(p.rules) for p in plans.numbers)
    print(f"ok: {args.file}: {len(plans.numbers)} numbers, {rules} rules")
    for plan in plans.numbers:
        extras = [f"{len(plan.rules)} rules"]
        if plan.caps:
            extras.append(f"{len(plan.caps)} caps")
        if plan.has_pin:
            extras.append("PIN")
        if plan.blacklist:
            extras.append(f"{len(plan.blacklist)} blacklisted")
        if plan.sms_replies:
            extras.append(f"{len(plan.sms_replies)} SMS replies")
        print(f"  {plan.number}: {', '.join(extras)}")
    return 0


def _parse_at(text: str | None):
    if text is None:
        return None
    try:
        return _dt.datetime.fromisoformat(text)
    except ValueError:
        raise SystemExit(f"tel400: --at: expected an ISO date and time like 2026-11-24T09:30+08:00, got {text!r}")


def _cmd_route(args) -> int:
    plans = _whole_plans(args.file)
    router = Router(plans)
    if args.sms is not None:
        return _print_sms_answer(args, router)
    decision = router.route(
        args.dialed, args.caller, at=_parse_at(args.at), channel=args.channel, pin=args.pin, explain=args.explain
    )
    if args.json:
        print(json.dumps(decision.as_dict(), ensure_ascii=False, indent=2))
        return 0
    print(f"action:   {decision.action}")
    print(f"targets:  {', '.join(decision.targets) or '-'}")
    print(f"prompt:   {decision.prompt or '-'}")
    print(f"reason:   {decision.reason}")
    print(f"rule:     {decision.rule or '-'}")
    print(f"province: {decision.province or '-'}")
    if args.explain:
        print("why:")
        for step in decision.explain or ():
            print(f"  {step}")
    return 0


def _print_sms_answer(args, router: Router) -> int:
    """``tel400 route FILE DIALED SENDER --sms TEXT``: what answer_sms decides (a fresh router: nothing kept)."""
    answer = router.answer_sms(args.dialed, args.caller, args.sms, at=_parse_at(args.at), explain=args.explain)
    if args.json:
        out = {"number": answer.number, "kind": answer.kind, "reply": answer.reply, "parts": answer.parts,
               "rule": answer.rule, "reason": answer.reason, "province": answer.province,
               "route": answer.route.as_dict() if answer.route is not None else None, "trace": list(answer.trace)}
        print(json.dumps(out, ensure_ascii=False, indent=2))
        return 0
    print(f"kind:     {answer.kind}")
    print(f"reply:    {answer.reply if answer.reply is not None else '-'}")
    print(f"parts:    {answer.parts}")
    print(f"reason:   {answer.reason}")
    print(f"rule:     {answer.rule or '-'}")
    print(f"province: {answer.province or '-'}")
    if answer.route is not None:
        print(f"onward:   {answer.route.action} {', '.join(answer.route.targets) or '-'} ({answer.route.reason})")
    if args.explain:
        print("why:")
        for line in answer.trace:
            print(f"  {line}")
    return 0


def _cmd_locate(args) -> int:
    if args.segments:
        use_segments(load_segments(args.segments))
    status = 0
    for raw in args.numbers:
        try:
            normal = normalize(raw)
        except NumberError as exc:
            print(f"{raw}: {exc}")
            status = 1
            continue
        code = locate(normal)
        if code is None:
            print(f"{raw}: {normal} -> unknown province")
        else:
            print(f"{raw}: {normal} -> {code} {provinces.CHINESE_NAMES[code]} {provinces.ENGLISH_NAMES[code]}")
    return status


def _cmd_simulate(args) -> int:
    plans = _whole_plans(args.file)
    start = _dt.date.fromisoformat(args.start) if args.start else None
    if args.week:
        return _print_week(plans, args, start)
    if args.number or args.province:
        raise ValueError("--number and --province go with --week")
    report = simulate(plans, args.calls, seed=args.seed, start=start)
    if args.json:
        print(json.dumps(report.as_dict(), ensure_ascii=False, indent=2))
    else:
        print(report.render())
    return 0


def _print_week(plans, args, start) -> int:
    """``simulate --week``: the plan's decision at each hour of a week, for a caller from a province."""
    if not args.number or not args.province:
        raise ValueError("--week needs --number and --province")
    if start is None:
        today = _dt.date.today()
        start = today - _dt.timedelta(days=today.weekday())
    grid = week_grid(plans, args.number, args.province, start=start, channel=args.channel)
    if args.json:
        print(json.dumps(grid.as_dict(), ensure_ascii=False, indent=2))
    else:
        print(grid.render())
    return 0


def _cmd_calendar(args) -> int:
    calendar = None
    if args.plans:
        plans = _whole_plans(args.plans)
        spec = plans.calendar
        if args.number:
            plan = plans.get(args.number)
            if plan is None:
                raise ValueError(f"--number: {args.number} has no plan in {args.plans}")
            spec = spec.merged(plan.calendar)
        calendar = spec.build()
    elif args.number:
        raise ValueError("--number needs --plans")
    for year, source in describe_years(calendar):
        print(f"{year}: {source}")
    if args.date:
        from .workdays import OfficialCalendar

        day = _dt.date.fromisoformat(args.date)
        is_workday = (calendar or OfficialCalendar()).is_workday(day.toordinal())
        print(f"{day.isoformat()}: {'workday' if is_workday else 'holiday'}")
    return 0


def _cmd_store_import(args) -> int:
    """All or nothing: a JSON Lines file streamed (every bad line named), anything else loaded whole."""
    if not args.source.lower().endswith(JSONL_EXTENSIONS):
        plans = _whole_plans(args.source)
    store = open_store(args.dest)
    if not store.writable:
        raise ValueError(f"{args.dest} is not a writable store (sqlite:///… or redis://…)")
    if args.source.lower().endswith(JSONL_EXTENSIONS):
        count = import_jsonl(store, args.source, actor=args.actor, workers=args.workers)
    else:
        store.replace_all(plans, actor=args.actor)
        count = len(plans.numbers)
    print(f"imported {count} numbers from {args.source} into {args.dest}")
    return 0


def _cmd_store_export(args) -> int:
    store = open_store(args.store, create=False)
    if not args.jsonl:
        print(json.dumps(store.load().to_dict(), ensure_ascii=False, indent=2))
    elif store.writable:
        store.export_jsonl(sys.stdout)
    else:  # a file: its valid numbers, one a line
        tree = store.load().to_dict()
        print(json.dumps({"settings": {k: v for k, v in tree.items() if k != "numbers"}}, ensure_ascii=False))
        for plan in tree["numbers"]:
            print(json.dumps(plan, ensure_ascii=False))
    return 0


def _cmd_store_audit(args) -> int:
    store = open_store(args.store, create=False)
    if not store.writable:
        raise ValueError(f"{args.store} keeps no audit log (only sqlite:// and redis:// stores do)")
    for entry in store.audit(args.number, args.limit):
        at = _dt.datetime.fromtimestamp(entry["at"]).isoformat(timespec="seconds")
        print(f"{at}  {entry['actor']:<12} {entry['action']:<12} {entry['number'] or '-'}")
    return 0


def _cmd_pin_hash(args) -> int:
    try:
        print(make_hash(args.pin))
    except ValueError as exc:
        print(f"tel400: {exc}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tel400", description="Call routing for Chinese 400 numbers.")
    parser.add_argument("--version", action="version", version=f"tel400 {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check", help="validate a plan file (exit 1 with the error)")
    p.add_argument("file")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("route", help="route one call and print the decision")
    p.add_argument("file")
    p.add_argument("dialed")
    p.add_argument("caller")
    p.add_argument("--at", help="ISO date and time (default: now; without an offset: the plan's zone)")
    p.add_argument("--pin")
    p.add_argument("--channel", choices=("voice", "sms"), default="voice")
    p.add_argument("--explain", action="store_true", help="show every check")
    p.add_argument("--sms", metavar="TEXT",
                   help="instead: answer an incoming SMS with this text (auto-reply, opt-out; docs/sms.md)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_route)

    p = sub.add_parser("locate", help="normalise numbers and name their province")
    p.add_argument("numbers", nargs="+")
    p.add_argument("--segments", help="an operator's segment CSV laid over the built-in table")
    p.set_defaults(func=_cmd_locate)

    p = sub.add_parser("simulate", help="route synthetic calls and tabulate the outcomes")
    p.add_argument("file")
    p.add_argument("--calls", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start", help="first day of the simulated week (default: this week's Monday)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--week", action="store_true",
                   help="instead: the decision at each hour of the week for --number and a caller from --province")
    p.add_argument("--number", help="with --week: the 400 number")
    p.add_argument("--province", help="with --week: the caller's province (code, Chinese or English name)")
    p.add_argument("--channel", choices=("voice", "sms"), default="voice", help="with --week (default voice)")
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser("calendar", help="which years the official calendar covers")
    p.add_argument("--plans", help="include a plan file's calendar additions")
    p.add_argument("--number", help="with --plans: include this number's own additions too")
    p.add_argument("--date", help="say whether this date is a working day")
    p.set_defaults(func=_cmd_calendar)

    p = sub.add_parser("store", help="copy plans into a SQLite or Redis store, export them, read the audit log")
    store_sub = p.add_subparsers(dest="store_command", required=True)
    q = store_sub.add_parser("import", help="replace a store's plans with those of a file or another store "
                             "(.jsonl/.ndjson: one number a line, streamed)")
    q.add_argument("source")
    q.add_argument("dest")
    q.add_argument("--actor", default="tel400-cli")
    q.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="processes that check a .jsonl file's numbers (default: one per core)")
    q.set_defaults(func=_cmd_store_import)
    q = store_sub.add_parser("export", help="print a store's plans as JSON")
    q.add_argument("store")
    q.add_argument("--jsonl", action="store_true",
                   help="JSON Lines: a settings line, then one number a line (what store import reads back)")
    q.set_defaults(func=_cmd_store_export)
    q = store_sub.add_parser("audit", help="the latest changes to a store")
    q.add_argument("store")
    q.add_argument("--number")
    q.add_argument("--limit", type=int, default=20)
    q.set_defaults(func=_cmd_store_audit)

    p = sub.add_parser("pin-hash", help="hash a PIN for a plan's pin_hash field")
    p.add_argument("pin")
    p.set_defaults(func=_cmd_pin_hash)
    return parser


def _configure_logging() -> None:
    """Warnings and errors only, on stderr: the command's output is its answer."""
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=stderr_logger,  # one write per line, to the sys.stderr of the moment
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging()
    try:
        return args.func(args)
    except (PlanError, SegmentError) as exc:
        print(f"tel400: {exc}", file=sys.stderr)
        return 1
    except BackendError as exc:
        print(f"tel400: {exc}", file=sys.stderr)
        return 3
    except ValueError as exc:
        print(f"tel400: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
