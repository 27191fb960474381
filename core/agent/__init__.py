"""The Vireo agent: the engine running on a remote host as a per-user daemon, reached over one SSH connection.

Pieces (each its own module): `protocol` (the framed wire format), `wire` (Host API values as JSON), `paths`
(where the socket and installed engines live), `daemon` (the server around a LocalHost), `bridge` (the stdio
relay an SSH channel runs), `probe` (what the client learns about a host before it talks to the agent),
`bundle`/`install` (packing this engine and uploading it over SFTP) and `console` (framebuffer updates as
compressed dirty rectangles). Everything the remote side imports here is standard library only until the
daemon loads the engine itself.
"""
