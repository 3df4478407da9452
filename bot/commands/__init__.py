"""Mail commands (`#kbot test`, `#kbot bisect ...`, `#kbot invalid`, `#kbot help`), read from
replies in the watched threads, as syzbot reads `#syz`: parse (which lines are commands),
auth (who may command kbot: allowlist and DKIM), act (acted on once, recorded with the job it
queued), reply (kbot's short answers), cli (`kbot commands list|run`)."""
