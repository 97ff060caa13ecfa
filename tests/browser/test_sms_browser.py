"""The SMS pages in Chromium: contacts imported by CSV upload, a group send created, its progress page.

The service runs in this process under uvicorn on a loopback port (the
portal harness's service with an :class:`~tel400.smsstore.SmsStore` set),
so the test needs no ``--sms-db`` of the command line; no job runner runs,
so the send stays at 0 sent: what is checked is the page, not delivery.
"""

from __future__ import annotations

import threading
import time

import pytest
from selenium.webdriver.common.by import By

from tel400.smsstore import SmsStore
from tel400.testing import free_port

from ..portal_harness import ACME_NUMBER, ACME_PASSWORD, make_portal
from .conftest import click_and_wait, login, shot

CSV = "phone,name,tags,city\n13901012345,张三,vip,北京\n13901012346,李四,vip,上海\n13901012347,<b>王五</b>,new,广州\n12,坏行,vip,x\n"


@pytest.fixture
def sms_portal(tmp_path):
    """The portal with an SMS store, served by uvicorn in a thread; yields (base URL, service)."""
    import uvicorn

    service, _accounts = make_portal(tmp_path)
    service.sms_store = SmsStore(tmp_path / "sms.db")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(service, host="127.0.0.1", port=port, lifespan="on", log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/portal", service
    server.should_exit = True
    thread.join(20)
    service.sms_store.close()


def test_import_contacts_create_a_group_send_and_see_its_progress(driver, sms_portal, tmp_path):
    base_url, service = sms_portal
    driver.delete_all_cookies()
    login(driver, base_url, ACME_NUMBER, ACME_PASSWORD)
    driver.get(f"{base_url}/n/{ACME_NUMBER}/contacts")
    upload = tmp_path / "book.csv"
    upload.write_bytes(CSV.encode("gb18030"))  # as Chinese Excel saves it
    driver.find_element(By.ID, "file").send_keys(str(upload))
    click_and_wait(driver, driver.find_element(By.ID, "import"))
    bad = driver.find_elements(By.CSS_SELECTOR, "#bad-lines tr.bad-line")
    assert [row.find_elements(By.TAG_NAME, "td")[0].text for row in bad] == ["5"]
    names = [td.text for td in driver.find_elements(By.CSS_SELECTOR, "#contacts td.name")]
    assert names == ["张三", "李四", "<b>王五</b>"]  # shown as text, not markup
    assert service.sms_store.count_contacts(ACME_NUMBER) == 3
    shot(driver, "sms-contacts")

    driver.get(f"{base_url}/n/{ACME_NUMBER}/sends")
    shot(driver, "sms-sends")
    driver.find_element(By.ID, "template").send_keys("{name}您好，{city}新店开业，欢迎光临！回复TD退订")
    driver.find_element(By.ID, "tags").send_keys("vip")
    driver.find_element(By.ID, "phones").send_keys("13901019999")
    rate = driver.find_element(By.ID, "rate")
    rate.clear()
    rate.send_keys("2")
    click_and_wait(driver, driver.find_element(By.ID, "create"))
    assert "/sends/j" in driver.current_url
    assert driver.find_element(By.ID, "total").text == "3"
    progress = driver.find_element(By.ID, "progress")
    assert (progress.get_attribute("value"), progress.get_attribute("max")) == ("0", "3")
    assert driver.find_element(By.ID, "sample-text").text == "张三您好，北京新店开业，欢迎光临！回复TD退订"
    shot(driver, "portal-sms-send")
    click_and_wait(driver, driver.find_element(By.ID, "pause"))
    assert driver.find_element(By.ID, "state").text == "已暂停"
    assert driver.find_elements(By.ID, "resume") and not driver.find_elements(By.ID, "pause")
    assert service.sms_store.jobs(ACME_NUMBER)[0].state == "paused"


def test_sms_records_and_opt_outs_pages_show_the_store_as_text(driver, sms_portal):
    base_url, service = sms_portal
    store = service.sms_store
    store.record_message(direction="in", number=ACME_NUMBER, peer="13901010001", text="<script>alert(1)</script>TD",
                         parts=1, kind="opt_out", outcome="received")
    store.record_message(direction="out", number=ACME_NUMBER, peer="13901010001", text="您已退订，回复KT恢复",
                         parts=1, kind="opt_out", outcome="sent", message_id="m-1")
    store.opt_out(ACME_NUMBER, "13901010001")
    store.opt_out(ACME_NUMBER, "13901010002")
    driver.delete_all_cookies()
    login(driver, base_url, ACME_NUMBER, ACME_PASSWORD)

    driver.get(f"{base_url}/n/{ACME_NUMBER}/sms-records")
    rows = driver.find_elements(By.CSS_SELECTOR, "#sms-records tr.sms")
    texts = [row.find_element(By.CSS_SELECTOR, "td.text").text for row in rows]
    assert texts == ["您已退订，回复KT恢复", "<script>alert(1)</script>TD"]  # newest first, markup as text
    assert [row.find_element(By.CSS_SELECTOR, "td.kind").text for row in rows] == ["退订", "退订"]
    shot(driver, "sms-records")

    driver.get(f"{base_url}/n/{ACME_NUMBER}/opt-outs")
    phones = [td.text for td in driver.find_elements(By.CSS_SELECTOR, "#opt-outs tr.opt-out td.phone")]
    assert sorted(phones) == ["13901010001", "13901010002"]
    shot(driver, "sms-opt-outs")
