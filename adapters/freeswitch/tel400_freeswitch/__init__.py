"""tel400 for FreeSWITCH: an Event Socket outbound server (``tel400-esl``).

* :mod:`tel400_freeswitch.protocol` — the Event Socket as a sans-IO protocol;
* :mod:`tel400_freeswitch.server` — the asyncio server that carries out decisions;
* :mod:`tel400_freeswitch.peer` — a FreeSWITCH stand-in for tests.
"""
