"""tel400 for FreeSWITCH: an Event Socket outbound server (``tel400-esl``).

* :mod:`tel400_freeswitch.protocol` — the Event Socket as a sans-IO protocol;
* :mod:`tel400_freeswitch.actions` — what FreeSWITCH does for a decision (also for mod_xml_curl);
* :mod:`tel400_freeswitch.session` — one call's conversation, a sans-IO state machine;
* :mod:`tel400_freeswitch.server` — the asyncio shell: connections, timers, the router;
* :mod:`tel400_freeswitch.peer` — a FreeSWITCH stand-in for tests.
"""
