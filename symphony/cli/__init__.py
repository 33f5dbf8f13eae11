"""The `symphony` command line (`main`), its shared options (`options`), the eval commands (`evals`) and the
demo (`demo`). Kept empty so that `symphony.cli.entry` can catch a Ctrl-C while `main` loads torch."""
