"""The routing editor's form: a stored plan tree as form values, and form values back as a plan tree.

Pure functions, no I/O, so the round trip is unit-tested: for a stored
(canonical, :func:`tel400.plans.dumped_plan`) tree,
``model_to_tree(fields_to_model(model_to_fields(tree_to_model(tree))), kept=tree) == tree``.

Three shapes:

- the *tree*: what the store keeps (docs/plans.md);
- the *model*: the same plan as strings and lists of strings, what the
  template draws (``model["rules"][0]["time"] == ["08:00-11:59"]``);
- the *fields*: the form's flat ``name -> [values]``, named by the model's
  path with dots (``rules.0.targets.1.weight``), which is also where a
  :class:`tel400.PlanError`'s field points (:func:`error_key`).

Nothing is checked here beyond reading the form: the library validates the
tree on save, and its :class:`~tel400.PlanError` is shown next to the input
it names.  The secrets (``pin``, ``pin_hash``) and the blacklist belong to
other pages: they never enter the form and are copied from the stored tree
(``kept``) on save.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from tel400 import provinces
from tel400.outcomes import STANDARD_PROMPTS
# The choices of a plan's fields: the library's own lists, so the form offers exactly what it accepts.
from tel400.plans import ACTIONS, CHANNELS, DEFAULT_SMS, MATCH_MODES, METRICS, PERIODS, SCOPES, STRATEGIES
from tel400.plans import BACKEND_POLICIES as BACKEND_ERROR
from tel400.timespec import parse_days

__all__ = [
    "ACTIONS", "CHANNELS", "DAY_TOKENS", "KEPT_FIELDS", "LISTS", "MATCH_MODES", "PROVINCES", "apply_op", "blank_rule",
    "error_key", "fields_to_model", "model_to_fields", "model_to_tree", "tree_to_model",
]

#: The day checkboxes: the weekdays, then the official calendar's working days and days off.
DAY_TOKENS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun", "workday", "holiday")
#: (code, Chinese name, English name) of every province, in tel400.provinces' order.
PROVINCES = tuple((code, provinces.CHINESE_NAMES[code], provinces.ENGLISH_NAMES[code])
                  for code in provinces.CODES if code)
#: A number's prompt keys a number may rename (``unknown_number`` is top-level only: docs/plans.md).
PROMPT_KEYS = tuple(key for key in STANDARD_PROMPTS if key != "unknown_number")
#: Fields of a number's plan edited on other pages; a save keeps them as stored.
KEPT_FIELDS = {"number": "the page's number", "pin": "the PIN page", "pin_hash": "the PIN page",
               "blacklist": "the blacklist page"}

#: The lists the editor's buttons add to, remove from and reorder (``{}`` is an index).
LISTS = ("rules", "caps", "default.targets", "rules.{}.targets", "rules.{}.time", "rules.{}.dates",
         "calendar.holidays", "calendar.workdays", "calendar.years",
         "sms_replies", "sms_replies.{}.keywords", "sms_replies.{}.time", "sms_replies.{}.dates",
         "sms.opt_out_words", "sms.opt_in_words")
#: The SMS settings' text inputs, in the form as in the plan (``sms.reply_limit``…).
SMS_TEXTS = ("opt_out_reply", "opt_in_reply", "reply_limit", "reply_window_s")
#: A form index longer than this many digits is ignored (no plan list is that long).
_MAX_INDEX_DIGITS = 5
_INDEXED = re.compile(rf"^(rules|caps|default\.targets|sms_replies)\.(\d{{1,{_MAX_INDEX_DIGITS}}})\.(.+)$")
_TARGET = re.compile(rf"^targets\.(\d{{1,{_MAX_INDEX_DIGITS}}})\.(to|weight)$")


# -- tree -> model ---------------------------------------------------------------------------------


def _text(value) -> str:
    return "" if value is None else str(value)


def _action_model(tree: Mapping) -> dict:
    targets = []
    for target in tree.get("targets", ()):
        if isinstance(target, Mapping):
            targets.append({"to": _text(target.get("to")), "weight": _text(target.get("weight", 1))})
        else:
            targets.append({"to": _text(target), "weight": "1"})
    return {"action": tree.get("action", "bridge"), "strategy": tree.get("strategy", "weighted"),
            "targets": targets, "queue": _text(tree.get("queue")), "room": _text(tree.get("room")),
            "prompt": _text(tree.get("prompt"))}


def _split(value) -> list[str]:
    """A comma-separated string or a list of them, as its items (the way the library reads them)."""
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else [value]
    return [part.strip() for item in items for part in str(item).split(",")]


def days_checked(text: str) -> list[str]:
    """The day checkboxes ``days`` text ticks (``"mon-fri"`` ticks mon to fri; ``"any"`` every weekday)."""
    days = parse_days(text)
    checked = [token for i, token in enumerate(DAY_TOKENS[:7]) if days.weekdays >> i & 1]
    return checked + [token for token in ("workday", "holiday") if getattr(days, token)]


def tree_to_model(tree: Mapping) -> dict:
    """A stored plan tree as the editor's model (every value a string, every list a list)."""
    default = dict(tree.get("default") or {"action": "reject"})
    default.setdefault("action", "reject")
    tariff = tree.get("tariff") or {}
    calendar = tree.get("calendar") or {}
    prompts = tree.get("prompts") or {}
    rules = []
    for rule in tree.get("rules", ()):
        rules.append({
            "name": _text(rule.get("name")),
            **_conditions_model(rule),
            "channel": rule.get("channel", "any"),
            **_action_model(rule),
        })
    return {
        "sms_replies": [_sms_reply_model(reply) for reply in tree.get("sms_replies", ())],
        "sms": _sms_model(tree.get("sms") or {}),
        "timezone": _text(tree.get("timezone", "Asia/Shanghai")),
        "reject_unknown_callers": bool(tree.get("reject_unknown_callers", False)),
        "on_backend_error": tree.get("on_backend_error", "allow"),
        "prompts": {key: _text(prompts.get(key)) for key in PROMPT_KEYS},
        "tariff": {"local": _text(tariff.get("local")), "long_distance": _text(tariff.get("long_distance")),
                   "increment_s": _text(tariff.get("increment_s")) if tariff else "",
                   "sms_part": _text(tariff.get("sms_part")) if tariff.get("sms_part") not in (None, 0, "0") else ""},
        "calendar": {key: [_text(v) for v in calendar.get(key, ())] for key in ("holidays", "workdays", "years")},
        "default": _action_model(default),
        "caps": [{"metric": cap.get("metric", "calls"), "per": cap.get("per", "day"), "limit": _text(cap.get("limit")),
                  "scope": cap.get("scope", "number"), "channel": cap.get("channel", "any"),
                  "prompt": _text(cap.get("prompt"))} for cap in tree.get("caps", ())],
        "rules": rules,
    }


def _conditions_model(item: Mapping) -> dict:
    """A rule's or an SMS reply's conditions as the editor shows them."""
    days = item.get("days")
    days_text = ",".join(_split(days)) if days is not None else ""
    provinces_ = item.get("provinces")
    return {
        "provinces": [provinces_] if isinstance(provinces_, str) else list(provinces_ or ()),
        "days": days_checked(days_text) if days_text else [],
        "days_text": days_text,
        "time": _split(item.get("time")),
        "dates": _split(item.get("dates")),
    }


def _sms_reply_model(reply: Mapping) -> dict:
    keywords = reply.get("keywords", ())
    return {"name": _text(reply.get("name")),
            "keywords": [keywords] if isinstance(keywords, str) else [_text(k) for k in keywords],
            "match": reply.get("match", "exact"), "reply": _text(reply.get("reply")),
            "route_onward": bool(reply.get("route_onward", False)), **_conditions_model(reply)}


def _sms_model(sms: Mapping) -> dict:
    """The SMS settings, the library's defaults shown where the plan gives none."""
    def words(key):
        value = sms.get(key, getattr(DEFAULT_SMS, key))
        return [value] if isinstance(value, str) else [_text(w) for w in value]

    return {"opt_out_words": words("opt_out_words"), "opt_in_words": words("opt_in_words"),
            **{key: _text(sms.get(key, getattr(DEFAULT_SMS, key))) for key in SMS_TEXTS}}


def blank_sms_reply() -> dict:
    return {"name": "", "keywords": [""], "match": "exact", "reply": "", "route_onward": False, "provinces": [],
            "days": [], "days_text": "", "time": [], "dates": []}


def blank_rule() -> dict:
    """A new rule: no conditions, bridge to one target still to be written."""
    return {"name": "", "provinces": [], "days": [], "days_text": "", "time": [], "dates": [], "channel": "any",
            "action": "bridge", "strategy": "weighted", "targets": [{"to": "", "weight": "1"}], "queue": "",
            "room": "", "prompt": ""}


def _blank(path: str):
    if path == "rules":
        return blank_rule()
    if path == "sms_replies":
        return blank_sms_reply()
    if path == "caps":
        return {"metric": "calls", "per": "day", "limit": "", "scope": "number", "channel": "any", "prompt": ""}
    if path.endswith("targets"):
        return {"to": "", "weight": "1"}
    return ""


# -- model <-> fields --------------------------------------------------------------------------------


def _action_fields(prefix: str, action: Mapping, out: dict) -> None:
    for key in ("action", "strategy", "queue", "room", "prompt"):
        out[f"{prefix}{key}"] = [action[key]]
    for i, target in enumerate(action["targets"]):
        out[f"{prefix}targets.{i}.to"] = [target["to"]]
        out[f"{prefix}targets.{i}.weight"] = [target["weight"]]


def model_to_fields(model: Mapping) -> dict[str, list[str]]:
    """The form a browser posts for ``model`` (unticked checkboxes absent, as a browser sends them)."""
    out: dict[str, list[str]] = {"timezone": [model["timezone"]], "on_backend_error": [model["on_backend_error"]]}
    if model["reject_unknown_callers"]:
        out["reject_unknown_callers"] = ["on"]
    for key, value in model["prompts"].items():
        out[f"prompts.{key}"] = [value]
    for key, value in model["tariff"].items():
        out[f"tariff.{key}"] = [value]
    for key, values in model["calendar"].items():
        out[f"calendar.{key}"] = list(values)
    _action_fields("default.", model["default"], out)
    for i, cap in enumerate(model["caps"]):
        for key, value in cap.items():
            out[f"caps.{i}.{key}"] = [value]
    for i, rule in enumerate(model["rules"]):
        prefix = f"rules.{i}."
        for key in ("name", "days_text", "channel"):
            out[prefix + key] = [rule[key]]
        for key in ("provinces", "days", "time", "dates"):
            if rule[key]:
                out[prefix + key] = list(rule[key])
        _action_fields(prefix, rule, out)
    for i, reply in enumerate(model["sms_replies"]):
        prefix = f"sms_replies.{i}."
        for key in ("name", "days_text", "match", "reply"):
            out[prefix + key] = [reply[key]]
        for key in ("keywords", "provinces", "days", "time", "dates"):
            if reply[key]:
                out[prefix + key] = list(reply[key])
        if reply["route_onward"]:
            out[prefix + "route_onward"] = ["on"]
    for key in ("opt_out_words", "opt_in_words"):
        out[f"sms.{key}"] = list(model["sms"][key])
    for key in SMS_TEXTS:
        out[f"sms.{key}"] = [model["sms"][key]]
    return out


def _one(fields: Mapping, name: str, default: str = "") -> str:
    values = fields.get(name) or [default]
    return str(values[0]).strip()


def _many(fields: Mapping, name: str) -> list[str]:
    return [str(v).strip() for v in fields.get(name, ())]


def _indices(fields: Mapping, list_name: str) -> list[int]:
    """The indices of ``list_name``'s items present in the form, in order (a crafted index is just a key)."""
    found = set()
    for name in fields:
        m = _INDEXED.match(name)
        if m and m.group(1) == list_name:
            found.add(int(m.group(2)))
    return sorted(found)


def _action_from_fields(fields: Mapping, prefix: str, default_action: str) -> dict:
    targets = []
    seen = set()
    for name in fields:
        if name.startswith(prefix):
            m = _TARGET.match(name[len(prefix):])
            if m:
                seen.add(int(m.group(1)))
    for i in sorted(seen):
        targets.append({"to": _one(fields, f"{prefix}targets.{i}.to"),
                        "weight": _one(fields, f"{prefix}targets.{i}.weight")})
    return {"action": _one(fields, prefix + "action", default_action),
            "strategy": _one(fields, prefix + "strategy", "weighted"), "targets": targets,
            "queue": _one(fields, prefix + "queue"), "room": _one(fields, prefix + "room"),
            "prompt": _one(fields, prefix + "prompt")}


def fields_to_model(fields: Mapping) -> dict:
    """A posted form (``name -> [values]``) as the model; unknown names are ignored."""
    rules = []
    for i in _indices(fields, "rules"):
        prefix = f"rules.{i}."
        rules.append({
            "name": _one(fields, prefix + "name"),
            "provinces": _many(fields, prefix + "provinces"),
            "days": [d for d in DAY_TOKENS if d in _many(fields, prefix + "days")],
            "days_text": _one(fields, prefix + "days_text"),
            "time": _many(fields, prefix + "time"),
            "dates": _many(fields, prefix + "dates"),
            "channel": _one(fields, prefix + "channel", "any"),
            **_action_from_fields(fields, prefix, "bridge"),
        })
    caps = [{key: _one(fields, f"caps.{i}.{key}", default)
             for key, default in (("metric", "calls"), ("per", "day"), ("limit", ""), ("scope", "number"),
                                  ("channel", "any"), ("prompt", ""))}
            for i in _indices(fields, "caps")]
    sms_replies = []
    for i in _indices(fields, "sms_replies"):
        prefix = f"sms_replies.{i}."
        sms_replies.append({
            "name": _one(fields, prefix + "name"),
            "keywords": _many(fields, prefix + "keywords"),
            "match": _one(fields, prefix + "match", "exact"),
            "reply": _one(fields, prefix + "reply"),
            "route_onward": prefix + "route_onward" in fields,
            "provinces": _many(fields, prefix + "provinces"),
            "days": [d for d in DAY_TOKENS if d in _many(fields, prefix + "days")],
            "days_text": _one(fields, prefix + "days_text"),
            "time": _many(fields, prefix + "time"),
            "dates": _many(fields, prefix + "dates"),
        })
    sms = {key: _many(fields, f"sms.{key}") for key in ("opt_out_words", "opt_in_words")}
    sms.update({key: _one(fields, f"sms.{key}") for key in SMS_TEXTS})
    return {
        "sms_replies": sms_replies,
        "sms": sms,
        "timezone": _one(fields, "timezone"),
        "reject_unknown_callers": "reject_unknown_callers" in fields,
        "on_backend_error": _one(fields, "on_backend_error", "allow"),
        "prompts": {key: _one(fields, f"prompts.{key}") for key in PROMPT_KEYS},
        "tariff": {key: _one(fields, f"tariff.{key}") for key in ("local", "long_distance", "increment_s", "sms_part")},
        "calendar": {key: _many(fields, f"calendar.{key}") for key in ("holidays", "workdays", "years")},
        "default": _action_from_fields(fields, "default.", "reject"),
        "caps": caps,
        "rules": rules,
    }


# -- model -> tree -----------------------------------------------------------------------------------


def _whole(text: str):
    """``"30"`` as 30; anything else as typed, for the library to refuse with its message."""
    return int(text) if re.fullmatch(r"-?\d{1,19}", text) else text


def _action_tree(action: Mapping) -> dict:
    kind = action["action"]
    if kind == "bridge":
        targets = [{"to": t["to"], "weight": _whole(t["weight"]) if t["weight"] else 1}
                   for t in action["targets"] if t["to"] or t["weight"] not in ("", "1")]
        return {"action": kind, "strategy": action["strategy"], "targets": targets}
    if kind == "queue":
        return {"action": kind, "queue": action["queue"]}
    if kind == "conference":
        return {"action": kind, "room": action["room"]}
    out = {"action": kind}
    if action["prompt"]:
        out["prompt"] = action["prompt"]
    return out


def _days_tree(rule: Mapping) -> str | None:
    """The rule's ``days``: its text as written while the ticks still mean it, else the ticks."""
    ticked = list(rule["days"])
    if not ticked:
        return None
    written = rule["days_text"]
    if written:
        try:
            if days_checked(written) == ticked:
                return written
        except ValueError:
            pass  # a crafted days_text: the ticks decide
    return ",".join(ticked)


def model_to_tree(model: Mapping, *, kept: Mapping | None = None) -> dict:
    """The plan tree of ``model``, with the fields other pages own (:data:`KEPT_FIELDS`) copied from ``kept``.

    Blank optional inputs are left out (the library's default applies);
    blank entries of a list (a time slot, a target) are dropped.
    """
    tree: dict = {key: kept[key] for key in KEPT_FIELDS if kept and key in kept}
    tree["timezone"] = model["timezone"]
    if model["reject_unknown_callers"]:
        tree["reject_unknown_callers"] = True
    if model["on_backend_error"] != "allow":
        tree["on_backend_error"] = model["on_backend_error"]
    prompts = {key: value for key, value in model["prompts"].items() if value}
    if prompts:
        tree["prompts"] = prompts
    tariff = model["tariff"]
    if any(tariff.values()):
        tree["tariff"] = {"local": tariff["local"], "long_distance": tariff["long_distance"]}
        if tariff["increment_s"]:
            tree["tariff"]["increment_s"] = _whole(tariff["increment_s"])
        if tariff["sms_part"]:
            tree["tariff"]["sms_part"] = tariff["sms_part"]
    calendar = {key: [v for v in values if v] for key, values in model["calendar"].items()}
    calendar["years"] = [_whole(v) for v in calendar["years"]]
    calendar = {key: values for key, values in calendar.items() if values}
    if calendar:
        tree["calendar"] = calendar
    tree["default"] = _action_tree(model["default"])
    caps = []
    for cap in model["caps"]:
        out = {"metric": cap["metric"], "per": cap["per"],
               "limit": _whole(cap["limit"]) if cap["metric"] == "calls" else cap["limit"],
               "scope": cap["scope"], "channel": cap["channel"]}
        if cap["prompt"]:
            out["prompt"] = cap["prompt"]
        caps.append(out)
    if caps:
        tree["caps"] = caps
    rules = []
    for rule in model["rules"]:
        out = {}
        if rule["name"]:
            out["name"] = rule["name"]
        if rule["provinces"]:
            out["provinces"] = list(rule["provinces"])
        days = _days_tree(rule)
        if days is not None:
            out["days"] = days
        for key in ("time", "dates"):
            items = [v for v in rule[key] if v]
            if items:
                out[key] = ",".join(items)
        if rule["channel"] != "any":
            out["channel"] = rule["channel"]
        out.update(_action_tree(rule))
        rules.append(out)
    tree["rules"] = rules
    replies = [_sms_reply_tree(reply) for reply in model["sms_replies"]]
    if replies:
        tree["sms_replies"] = replies
    sms = _sms_tree(model["sms"])
    if sms:
        tree["sms"] = sms
    return tree


def _sms_reply_tree(reply: Mapping) -> dict:
    out: dict = {}
    if reply["name"]:
        out["name"] = reply["name"]
    out["keywords"] = [k for k in reply["keywords"] if k]
    if reply["match"] != "exact":
        out["match"] = reply["match"]
    out["reply"] = reply["reply"]
    if reply["provinces"]:
        out["provinces"] = list(reply["provinces"])
    days = _days_tree(reply)
    if days is not None:
        out["days"] = days
    for key in ("time", "dates"):
        items = [v for v in reply[key] if v]
        if items:
            out[key] = ",".join(items)
    if reply["route_onward"]:
        out["route_onward"] = True
    return out


def _sms_tree(sms: Mapping) -> dict:
    """The SMS settings that differ from the library's defaults (blank: the default)."""
    out: dict = {}
    for key in ("opt_out_words", "opt_in_words"):
        words = [w for w in sms[key] if w]
        if words != list(getattr(DEFAULT_SMS, key)):
            out[key] = words
    for key in SMS_TEXTS:
        value = sms[key]
        default = getattr(DEFAULT_SMS, key)
        if value and value != str(default):
            out[key] = _whole(value) if isinstance(default, int) else value
    return out


# -- the editor's buttons ------------------------------------------------------------------------------


def _list_at(model: dict, path: str):
    """The list ``path`` names in ``model`` (``rules.2.targets``), or ``None`` when it names none."""
    node = model
    for part in path.split("."):
        if isinstance(node, list):
            if not part.isdigit() or len(part) > _MAX_INDEX_DIGITS or int(part) >= len(node):
                return None
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return None
    return node if isinstance(node, list) else None


def _allowed(path: str) -> bool:
    shape = re.sub(r"\.\d+\.", ".{}.", path)
    return shape in LISTS


def apply_op(model: dict, op: str) -> bool:
    """Apply one button of the form to ``model`` in place; ``False`` for an unknown button.

    ``add:<list>`` appends a blank item; ``remove:<list>.<i>``, ``up:<list>.<i>``
    and ``down:<list>.<i>`` remove or move item ``i`` (``up:rules.2`` makes
    rule 3 the second rule tried).
    """
    verb, _, path = op.partition(":")
    if verb == "add":
        items = _list_at(model, path) if _allowed(path) else None
        if items is None:
            return False
        items.append(_blank(path))
        return True
    head, _, index = path.rpartition(".")
    if verb not in ("remove", "up", "down") or not _allowed(head) or not index.isdigit():
        return False
    items = _list_at(model, head)
    i = int(index)
    if items is None or len(index) > _MAX_INDEX_DIGITS or i >= len(items):
        return False
    if verb == "remove":
        del items[i]
    elif verb == "up" and i > 0:
        items[i - 1], items[i] = items[i], items[i - 1]
    elif verb == "down" and i + 1 < len(items):
        items[i + 1], items[i] = items[i], items[i + 1]
    return True


# -- PlanError -> input ----------------------------------------------------------------------------------

_SUBSCRIPT = re.compile(r"\[(\d+)\]")


def error_key(tree: Mapping, rule: str | None, field: str | None) -> str:
    """The form name a :class:`tel400.PlanError` points at (``rules.0.time``, ``caps.1.limit``), or ``""``.

    The library names a rule by its name (``rule-N`` when it has none) and
    the field inside it as ``targets[0].weight``; the form names the rule by
    its position.
    """
    if not field:
        return ""
    path = _SUBSCRIPT.sub(r".\1", field)
    if rule is None:
        return path
    for i, r in enumerate(tree.get("rules", ())):
        if r.get("name", f"rule-{i + 1}") == rule:
            return f"rules.{i}.{path}"
    return ""
