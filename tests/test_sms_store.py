"""The SMS store: opt-outs, contacts and their CSV import, jobs, message records and their bounds."""

from __future__ import annotations

import os
import stat
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tel400.smsstore import Contact, ImportResult, JobProgress, SmsStore
from tel400.smstext import OutgoingSms

N = "4001012345"
OTHER = "4009998888"


@pytest.fixture
def store(tmp_path):
    return SmsStore(tmp_path / "sms.db")


def test_database_is_private(tmp_path):
    SmsStore(tmp_path / "sub" / "sms.db")
    assert stat.S_IMODE(os.stat(tmp_path / "sub" / "sms.db").st_mode) == 0o600


def test_opt_out_in(store):
    assert store.opt_out(N, "13901012345") is True
    assert store.opt_out(N, "13901012345") is False
    assert store.is_opted_out(N, "13901012345")
    assert not store.is_opted_out(OTHER, "13901012345")  # per number
    assert store.is_opted_out(N, "+86 139-0101-2345")  # any written form
    assert store.opt_out(N, "106575550000") and store.is_opted_out(N, "106575550000")  # kept as written
    assert store.opt_in(N, "13901012345") is True
    assert store.opt_in(N, "13901012345") is False
    assert not store.is_opted_out(N, "13901012345")


def test_opt_outs_from_threads(store):
    def work(i):
        for j in range(20):
            store.opt_out(N, f"1390101{i:02d}{j:02d}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(store.is_opted_out(N, f"1390101{i:02d}{j:02d}") for i in range(6) for j in range(20))


def test_contacts_put_list_page_delete(store):
    c = store.put_contact(N, "+86 139-0101-2345", name=" Li Lei ", tags=["vip", "vip", " bj "],
                          fields={"city": "Beijing"})
    assert c == Contact(N, "13901012345", "Li Lei", ("bj", "vip"), {"city": "Beijing"})
    for i in range(5):
        store.put_contact(N, f"1380000000{i}", tags=["vip"] if i % 2 else [])
    assert store.contact(N, "13901012345") == c
    assert store.contact(OTHER, "13901012345") is None
    assert store.count_contacts(N) == 6 and store.count_contacts(N, tag="vip") == 3
    first = store.contacts(N, limit=4)
    rest = store.contacts(N, after=first[-1].phone, limit=4)
    assert [x.phone for x in first + rest] == sorted(x.phone for x in first + rest)
    assert len(first) == 4 and len(rest) == 2
    assert [x.phone for x in store.contacts(N, tag="vip")] == ["13800000001", "13800000003", "13901012345"]
    assert store.delete_contact(N, "13901012345") and not store.delete_contact(N, "13901012345")
    assert store.count_contacts(N, tag="vip") == 2
    assert store.contacts(OTHER) == []


@pytest.mark.parametrize("kwargs, message", [
    ({"phone": "not a phone"}, "bad phone"),
    ({"phone": "13901012345", "name": "x" * 65}, "name longer"),
    ({"phone": "13901012345", "fields": {"phone": "1"}}, "bad field name"),
    ({"phone": "13901012345", "fields": {"a b": "1"}}, "bad field name"),
    ({"phone": "13901012345", "tags": [f"t{i}" for i in range(21)]}, "more than 20 tags"),
])
def test_bad_contact_refused(store, kwargs, message):
    phone = kwargs.pop("phone")
    with pytest.raises(ValueError, match=message):
        store.put_contact(N, phone, **kwargs)


def test_contacts_bounded(tmp_path):
    store = SmsStore(tmp_path / "sms.db", max_contacts=2)
    store.put_contact(N, "13800000001")
    store.put_contact(N, "13800000002")
    store.put_contact(N, "13800000002", name="updated")  # an update is not a new contact
    with pytest.raises(ValueError, match="full"):
        store.put_contact(N, "13800000003")
    store.put_contact(OTHER, "13800000003")  # the bound is per number


CSV = """phone,name,tags,city
13901012345,Li Lei,vip;bj,Beijing
not-a-phone,Bad,,
13901012346,Han Meimei,vip|sh,Shanghai,extra
13901012345,Again,,
13901012347,"Quoted, Name",,Shenzhen

+86 139 0101 2348,,,
"""


def test_import_reports_every_bad_line_keeps_good(store):
    result = store.import_contacts(N, CSV)
    assert isinstance(result, ImportResult)
    assert (result.added, result.updated) == (3, 0)
    assert [(line, msg.split(":")[0]) for line, _, msg in result.errors] == [
        (3, "bad phone"), (4, "5 cells; the header has 4"), (5, "13901012345 is already on an earlier line")]
    assert result.errors[0][1] == "not-a-phone,Bad,,"
    li = store.contact(N, "13901012345")
    assert li.tags == ("bj", "vip") and li.fields == {"city": "Beijing"}
    assert store.contact(N, "13901012347").name == "Quoted, Name"
    assert store.contact(N, "13901012348").fields == {"city": ""}
    again = store.import_contacts(N, "phone,name\n13901012345,Li\n")
    assert (again.added, again.updated, again.errors) == (0, 1, [])


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "gb18030"])
def test_import_encodings(store, encoding):
    data = "phone,name,tags\n13901012345,李雷,贵宾\n".encode(encoding)
    assert store.import_contacts(N, data).added == 1
    assert store.contact(N, "13901012345").name == "李雷"
    assert store.contacts(N, tag="贵宾")[0].phone == "13901012345"


@pytest.mark.parametrize("data, message", [
    ("", "empty"),
    ("name,tags\nx,y\n", "no 'phone' column"),
    ("phone,phone\n1,2\n", "named twice"),
    ("phone,bad col\n", "bad field name"),
    (b"phone\n\xff\xfe\xff\n", "neither UTF-8 nor GB18030"),
    ("phone\n1\x002\n", "NUL"),
])
def test_import_refuses_unusable_files(store, data, message):
    with pytest.raises(ValueError, match=message):
        store.import_contacts(N, data)
    assert store.count_contacts(N) == 0


def test_import_bounded(tmp_path):
    store = SmsStore(tmp_path / "sms.db", max_import_bytes=100, max_contacts=2)
    with pytest.raises(ValueError, match="at most 100"):
        store.import_contacts(N, "phone\n" + "13901012345\n" * 20)
    result = store.import_contacts(N, "phone\n13800000001\n13800000002\n13800000003\n")
    assert result.added == 2 and result.errors == [(4, "13800000003", "the address book is full (2 contacts)")]


def test_import_hostile_csv_never_crashes(store):
    big_field = "phone,name\n13901012345,\"" + "x" * 200_000 + "\"\n13901012346,ok\n"
    result = store.import_contacts(N, big_field)
    assert result.errors and store.contact(N, "13901012345") is None


def _msg(i, number=N, text="hi"):
    return OutgoingSms(message_id=f"m{i}", number=number, sender="10657" + number, to="13901012345",
                       text=text, parts=1, kind="reply")


def test_messages_delivery_and_totals(store):
    store.record_message(_msg(1), outcome="sent", at=100)
    store.record_message(_msg(2), outcome="sent", at=101)
    store.record_message(_msg(3), outcome="failed", at=102)
    store.record_message(direction="in", number=N, peer="13901012345", text="TD", parts=1, kind="opt_out",
                         outcome="ok", at=103)
    store.record_message(_msg(4, number=OTHER), outcome="sent", at=104)
    assert store.set_delivery("m1", "delivered", at=110) is True
    assert store.set_delivery("m2", "rejected") is True
    assert store.set_delivery("nope", "delivered") is False
    assert store.delivery_of("m1") == "delivered" and store.delivery_of("nope") is None
    with pytest.raises(ValueError, match="delivery state"):
        store.set_delivery("m1", "bogus")
    assert store.sms_totals(N, 0, 200) == {"in": 1, "out": 2, "parts_out": 2, "delivered": 1, "failed": 2}
    assert store.sms_totals(N, 101, 103)["out"] == 1
    # a resent message keeps one row and its delivery state
    store.record_message(_msg(1), outcome="sent", at=120)
    assert store.delivery_of("m1") == "delivered"
    assert len([m for m in store.messages(N) if m["message_id"] == "m1"]) == 1
    assert {m["message_id"] for m in store.messages(OTHER)} == {"m4"}  # each number sees its own
    page = store.messages(N, limit=2)
    assert len(page) == 2 and store.messages(N, before_id=page[-1]["id"])[0]["id"] < page[-1]["id"]


def test_message_records_pruned(tmp_path):
    now = [1_000_000.0]
    store = SmsStore(tmp_path / "sms.db", retention_days=1, max_messages=3, clock=lambda: now[0])
    store.record_message(_msg(0), outcome="sent", at=now[0] - 2 * 86400)  # beyond retention
    for i in range(1, 6):
        store.record_message(_msg(i), outcome="sent")
    assert store.prune() == 3
    assert [m["message_id"] for m in store.messages(N)] == ["m5", "m4", "m3"]


def test_message_text_bounded(tmp_path):
    store = SmsStore(tmp_path / "sms.db", max_text_chars=10)
    store.record_message(direction="in", number=N, peer="x", text="y" * 10_000, parts=1, kind="reply", outcome="ok")
    assert store.messages(N)[0]["text"] == "y" * 10


def test_job_snapshot_render_and_ids(store):
    store.import_contacts(N, "phone,name,tags,city\n13901012345,Li,vip,Beijing\n13901012346,Han,vip;sh,\n"
                             "13901012347,Wang,sh,Shanghai\n")
    job = store.create_job(N, "{name} in {city}: call {number} {{ok}}", tags=["vip", "sh"],
                           phones=["13901012346", "+86 13900000000"], rate=5, actor="alice")
    assert job.state == "scheduled" and job.total == 4 and job.created_by == "alice"
    texts = [store.recipient(job.job_id, i) for i in range(4)]
    assert [r.phone for r in texts] == ["13901012345", "13901012346", "13901012347", "13900000000"]
    assert [r.text for r in texts] == [
        f"Li in Beijing: call {N} {{ok}}", f"Han in : call {N} {{ok}}", f"Wang in Shanghai: call {N} {{ok}}",
        f" in : call {N} {{ok}}"]
    assert texts[0].message_id == f"{job.job_id}-0"
    # a later change to the book does not change the job
    store.put_contact(N, "13901012345", name="Changed")
    assert store.recipient(job.job_id, 0).text.startswith("Li ")
    assert store.progress(N, job.job_id) == JobProgress(4, 4, 0, 0, 0, 0, 0, 0, 0)


@pytest.mark.parametrize("kwargs, message", [
    ({"template": "hi {nmae}"}, "unknown placeholder"),
    ({"template": "hi {name"}, "brace"),
    ({"template": ""}, "empty"),
    ({"template": "x" * 1001}, "longer than"),
    ({"rate": 0}, "rate"),
    ({"rate": 501}, "rate"),
    ({"rate": float("nan")}, "rate"),
    ({"rate": "fast"}, "rate"),
    ({"not_before": "25:00"}, "bad time"),
    ({"phones": ["garbage"]}, "bad phone"),
    ({"phones": [], "tags": ["nobody"]}, "no recipients"),
    ({"template": "长" * 700}, "more than 10 parts"),
])
def test_bad_jobs_refused(store, kwargs, message):
    args = {"template": "hi {name}", "phones": ["13901012345"], "rate": 1} | kwargs
    with pytest.raises(ValueError, match=message):
        store.create_job(N, args.pop("template"), actor="a", **args)
    assert store.jobs(N) == []


def test_job_bounds(tmp_path):
    store = SmsStore(tmp_path / "sms.db", max_recipients=2, max_open_jobs=1)
    with pytest.raises(ValueError, match="more than 2 recipients"):
        store.create_job(N, "x", phones=["13800000001", "13800000002", "13800000003"], rate=1, actor="a")
    store.create_job(N, "x", phones=["13800000001", "13800000001", "13800000002"], rate=1, actor="a")
    with pytest.raises(ValueError, match="unfinished jobs"):
        store.create_job(N, "x", phones=["13800000001"], rate=1, actor="a")


def test_jobs_belong_to_their_number(store):
    job = store.create_job(N, "x", phones=["13800000001"], rate=1, not_before="9:00", not_after="18:00", actor="a")
    assert (job.not_before, job.not_after) == ("09:00", "18:00")
    assert store.job(OTHER, job.job_id) is None and store.progress(OTHER, job.job_id) is None
    assert store.jobs(OTHER) == [] and [j.job_id for j in store.jobs(N)] == [job.job_id]
    for action in (store.pause, store.resume, store.cancel):
        with pytest.raises(LookupError):
            action(OTHER, job.job_id, actor="mallory")
    assert store.job(N, job.job_id).state == "scheduled"


def test_job_transitions(store):
    job = store.create_job(N, "x", phones=["13800000001"], rate=1, actor="a")
    with pytest.raises(ValueError, match="cannot resume a job that is scheduled"):
        store.resume(N, job.job_id, actor="a")
    assert store.pause(N, job.job_id, actor="b").state == "paused"
    assert store.resume(N, job.job_id, actor="c").updated_by == "c"
    assert store.cancel(N, job.job_id, actor="d").state == "cancelled"
    with pytest.raises(ValueError, match="cannot pause a job that is cancelled"):
        store.pause(N, job.job_id, actor="a")


def test_delivery_report_settles_a_recipient_in_doubt(store):
    job = store.create_job(N, "hello {name}", phones=["13800000001", "13800000002"], rate=1, actor="a")
    store.set_recipient(job.job_id, 0, "sending", expect=("pending",))
    assert store.set_delivery(f"{job.job_id}-0", "submitted") is True
    assert store.recipient(job.job_id, 0).state == "sent"
    assert store.messages(N)[0]["message_id"] == f"{job.job_id}-0"  # recorded though the runner never did
    assert store.set_delivery(f"{job.job_id}-1", "delivered") is True  # a pending one is not "sent" by a report
    assert store.recipient(job.job_id, 1).state == "pending"
    assert store.set_delivery(f"{job.job_id}-9", "delivered") is False
    assert store.set_delivery("j0000000000000000-0", "delivered") is False


def _doc_blocks(section: str) -> list[str]:
    import pathlib
    import re

    text = (pathlib.Path(__file__).resolve().parent.parent / "docs" / "sms.md").read_text(encoding="utf-8")
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, re.S)


def test_docs_examples_run(tmp_path, monkeypatch):
    """The address book's and group sends' examples in docs/sms.md run as written (but on a temporary file)."""
    monkeypatch.chdir(tmp_path)
    blocks = _doc_blocks("Address book") + [b for b in _doc_blocks("Group sends") if "JobRunner" not in b]
    assert len(blocks) == 2
    scope = {}
    for block in blocks:
        exec(block.replace('"/var/lib/tel400/sms.db"', '"sms.db"'), scope)  # noqa: S102 - our own docs
    store, job = scope["store"], scope["job"]
    assert store.job("4001012345", job.job_id).state == "cancelled"
    assert store.recipient(job.job_id, 0).text == "李雷您好，北京店周末八折。退订回TD"


def test_lone_surrogates_refused_or_replaced(store):
    with pytest.raises(ValueError, match="surrogates"):
        store.put_contact(N, "13901012345", name="a\ud800")
    result = store.import_contacts(N, "phone,name\n13901012345,b\udfff\n13901012346,ok\n")
    assert result.added == 1 and [(line, msg) for line, _, msg in result.errors] == [(2, "the text holds lone surrogates (not Unicode text)")]
    with pytest.raises(ValueError, match="surrogates"):
        store.create_job(N, "hi \ud800", phones=["13901012345"], rate=1, actor="a")
    store.record_message(direction="in", number=N, peer="13901012345", text="x\ud800y", parts=1, kind="reply",
                         outcome="ok")
    assert store.messages(N)[0]["text"] == "x?y"


def test_one_tag_or_phone_as_a_string(store):
    store.put_contact(N, "13901012345", tags="vip")
    assert store.contact(N, "13901012345").tags == ("vip",)
    assert store.create_job(N, "x", tags="vip", phones="13901012346", rate=1, actor="a").total == 2


def test_import_in_batches_keeps_the_bound(tmp_path, monkeypatch):
    import tel400.smsstore

    monkeypatch.setattr(tel400.smsstore, "_IMPORT_BATCH", 2)
    store = SmsStore(tmp_path / "sms.db", max_contacts=3)
    result = store.import_contacts(N, "phone\n" + "".join(f"1380000000{i}\n" for i in range(5)))
    assert result.added == 3 and [e[0] for e in result.errors] == [5, 6]
    assert store.count_contacts(N) == 3


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=400), st.text(max_size=400),
                      st.lists(st.lists(st.text(max_size=30), max_size=6), max_size=8).map(
                          lambda rows: "phone,name,tags,x\n" + "\n".join(",".join(r) for r in rows))))
def test_import_any_input_is_a_result_or_a_value_error(store, data):
    try:
        result = store.import_contacts(N, data)
    except ValueError:
        return
    assert result.added + result.updated <= store.count_contacts(N)
    assert all(isinstance(line, int) and isinstance(msg, str) for line, _, msg in result.errors)


def test_a_final_delivery_state_is_never_moved_back_by_a_late_or_repeated_report(tmp_path):
    # Kannel sends type 8 (submitted) and 1 (delivered) for each message, in either order, and a
    # retried dlr-url request repeats one: "delivered" then "submitted" must stay "delivered".
    store = SmsStore(tmp_path / "sms.db")
    store.record_message(number="4001012345", peer="13901012345", text="hi", parts=1, kind="reply",
                         outcome="sent", message_id="m1")
    assert store.set_delivery("m1", "delivered", at=100) is True
    assert store.set_delivery("m1", "submitted", at=101) is True  # known id: still True (smsbox gets its 200)
    assert store.delivery_of("m1") == "delivered"
    assert store.set_delivery("m1", "failed", at=102) is True  # one final state to another: the last word
    assert store.delivery_of("m1") == "failed"
    job = store.create_job("4001012345", "hello", phones=["13901012345"], rate=10, actor="test")
    mid = f"{job.job_id}-0"
    assert store.set_recipient(job.job_id, 0, "sending", expect=("pending",))
    assert store.set_delivery(mid, "delivered") is True  # settles the recipient and records the message
    assert store.set_delivery(mid, "submitted") is True
    assert store.delivery_of(mid) == "delivered"
    assert store.progress("4001012345", job.job_id).delivered == 1


def test_every_method_reads_the_number_in_any_written_form(store):
    """M3: "400-101-2345" is the tenant "4001012345": an opt-out under one form stops a job under the other."""
    store.opt_out("4001012345", "13901012345")
    store.put_contact("400-101-2345", "13901012345", tags=["t"])
    assert store.is_opted_out("400 101 2345", "13901012345")
    assert [c.phone for c in store.contacts(N)] == ["13901012345"]  # one address book
    job = store.create_job("400-101-2345", "x", tags=["t"], rate=1, actor="a")
    assert store.job(N, job.job_id) is not None and job.number == N
    store.record_message(direction="in", number="+86 400 101 2345", peer="13901012345", text="x", parts=1,
                         kind="in", outcome="received")
    assert store.sms_totals(N, 0, 2e10)["in"] == 1


@pytest.mark.parametrize("bad", ["13901012345", "02112345678", "abc", "", None, "4001012345\r\n"])
def test_a_number_that_is_not_400_or_800_is_refused(store, bad):
    for call in (lambda: store.opt_out(bad, "13901012345"), lambda: store.put_contact(bad, "13901012345"),
                 lambda: store.contacts(bad), lambda: store.create_job(bad, "x", phones=["13901012345"], rate=1, actor="a"),
                 lambda: store.record_message(direction="in", number=bad, peer="1", text="x", parts=1, kind="in",
                                              outcome="received")):
        with pytest.raises(ValueError, match="400/800|needs number"):
            call()


def test_message_ids_belong_to_their_number(store):
    """M5: the same external id under two numbers is two records; a report naming a number touches only it."""
    for number, text in ((OTHER, "B's"), (N, "A's")):
        store.record_message(direction="in", number=number, peer="13800000001", text=text, parts=1, kind="in",
                             outcome="received", message_id="plat-42")
    assert [m["text"] for m in store.messages(OTHER)] == ["B's"]
    assert [m["text"] for m in store.messages(N)] == ["A's"]
    assert store.set_delivery("plat-42", "failed", number=N) is True
    assert store.delivery_of("plat-42", number=N) == "failed"
    assert store.delivery_of("plat-42", number=OTHER) is None
    assert store.set_delivery("plat-42", "delivered", number="4000000000") is False


def test_a_future_dated_record_does_not_stop_pruning(tmp_path):
    """L1: records are pruned by their own time, not up to the first young one."""
    now = [1_800_000_000.0]
    store = SmsStore(tmp_path / "sms.db", retention_days=1, clock=lambda: now[0])
    store.record_message(direction="in", number=N, peer="13900000009", text="x", parts=1, kind="in",
                         outcome="received", at=4102444799)
    for _ in range(5):
        store.record_message(direction="in", number=N, peer="13900000009", text="old", parts=1, kind="in",
                             outcome="received")
    now[0] += 10 * 86400
    assert store.prune() == 5
    assert [m["text"] for m in store.messages(N)] == ["x"]


@pytest.mark.parametrize("bad_line", ["13800000000," + "x" * 200_000, '13800000000,"Bob'])
def test_one_bad_csv_line_never_swallows_the_good_lines_after_it(store, bad_line):
    """M4: each physical line is read alone: a huge cell or a stray quote is one bad line, reported as such."""
    good = "".join(f"1390000{i:04d},n{i}\n" for i in range(50))
    result = store.import_contacts(N, ("phone,name\n" + bad_line + "\n" + good + "13800000001,\"a\nb\"\n").encode())
    assert result.added == 50
    assert [e[0] for e in result.errors] == [2, 53, 54]  # the bad line; a quoted break makes two bad lines


def test_the_import_line_bound_is_tunable(tmp_path):
    store = SmsStore(tmp_path / "sms.db", max_line_chars=30)
    result = store.import_contacts(N, b"phone,name\n13900000001," + b"n" * 30 + b"\n13900000002,ok\n")
    assert result.added == 1 and result.errors[0][0] == 2 and "at most 30" in result.errors[0][2]
    with pytest.raises(ValueError, match="max_line_chars"):
        SmsStore(tmp_path / "b.db", max_line_chars=0)


def test_a_field_a_contact_holds_is_one_a_template_can_name(store):
    """L4b: one rule for field names (tel400.smstext.is_field_name): `City` was stored but `{City}` refused."""
    with pytest.raises(ValueError, match="bad field name 'City'"):
        store.put_contact(N, "13901012345", fields={"City": "北京"})
    store.put_contact(N, "13901012345", fields={"city": "北京"}, tags=["t"])
    job = store.create_job(N, "{city}", tags=["t"], rate=1, actor="a")
    assert store.recipient(job.job_id, 0).text == "北京"


def test_an_import_in_a_stated_encoding_is_not_guessed(store):
    """L4a: GB18030 "谢谢" is also valid UTF-8 ("лл"): auto guesses UTF-8; encoding="gb18030" reads it right."""
    data = "phone,name\n13901012345,谢谢\n".encode("gb18030")
    store.import_contacts(N, data)
    assert store.contact(N, "13901012345").name == "лл"  # the documented ambiguity of "auto"
    store.import_contacts(N, data, encoding="gb18030")
    assert store.contact(N, "13901012345").name == "谢谢"
    with pytest.raises(ValueError, match="not utf-8"):
        store.import_contacts(N, "phone,name\n13901012345,你好\n".encode("gb18030"), encoding="utf-8")
    with pytest.raises(ValueError, match="encoding must be"):
        store.import_contacts(N, data, encoding="latin-1")


def test_create_and_cancel_cannot_grow_the_store_without_bound(tmp_path):
    """L3: the open-jobs bound let a loop of create+cancel add recipients forever; jobs per day bound it."""
    now = [1_800_000_000.0]
    store = SmsStore(tmp_path / "sms.db", max_open_jobs=1, max_jobs_per_day=3, clock=lambda: now[0])
    for _ in range(3):
        job = store.create_job(N, "hi", phones=["13901012345"], rate=1, actor="t")
        store.cancel(N, job.job_id, actor="t")
    with pytest.raises(ValueError, match="at most 3"):
        store.create_job(N, "hi", phones=["13901012345"], rate=1, actor="t")
    store.create_job(OTHER, "hi", phones=["13901012345"], rate=1, actor="t")  # per number
    now[0] += 86401
    assert store.create_job(N, "hi", phones=["13901012345"], rate=1, actor="t").state == "scheduled"
