"""The data path at inference, in order: `cache` (BoundedCache: sinks + ledger + window), `policies` (which cache a
stream gets), `salience` (what the ledger keeps), `recall` (evicted spans re-read for a question), `stream` (what a
stream carries between calls), `engine` (chunked prefill, compaction, decoding), `chat` (sessions, questions with
recall), `model` (SymphonyModel)."""
