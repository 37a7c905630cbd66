"""One Typer app per DVC stage: read params, call vpmel, write outputs."""
