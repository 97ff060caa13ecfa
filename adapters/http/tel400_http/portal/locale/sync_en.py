"""Write ``en/LC_MESSAGES/<feature>.po`` from ``zh_CN``'s: the same msgids, empty msgstr (English is the msgid)."""

import pathlib

from babel.messages.pofile import read_po, write_po

HERE = pathlib.Path(__file__).parent

for po in sorted((HERE / "zh_CN" / "LC_MESSAGES").glob("*.po")):
    with po.open("rb") as f:
        catalog = read_po(f, locale="zh_CN")
    catalog.locale = "en"
    for message in catalog:
        if message.id:
            message.string = ""
    out = HERE / "en" / "LC_MESSAGES" / po.name
    with out.open("wb") as f:
        write_po(f, catalog, omit_header=False, width=100)
    print(out)
