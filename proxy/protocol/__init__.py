"""The tunnel protocol, sans I/O: frames (`frames`), session state and flow control (`session`)."""
