"""The seven training phases (`phases.PHASES`) and what they share: run directories and manifests (`runs`), the
optimizer loop (`loop`), the streamed objective (`objective`), dev evaluation (`dev`), loss plots (`plots`)."""
