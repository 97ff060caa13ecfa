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
        # a fixed header: the file changes only when its messages do
        f.write(b'# English: the msgids themselves. Written by sync_en.py from zh_CN; do not edit.\n'
                b'msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset=UTF-8\\n"\n"Language: en\\n"\n\n')
        write_po(f, catalog, omit_header=True, width=100)
    print(out)
