"""VNC: the RFB protocol (RFC 6143, "The Remote Framebuffer Protocol", version 3.8 with the 3.3 fallback) for a
VM's console, Qt-free.

  protocol.py   the wire format both sides share: versions, security types, encodings, PixelFormat, messages
  pixels.py     Frame pixels (0xFFRRGGBB) -> a client's pixel format (8/16/32 bpp, either byte order)
  encode.py     Raw, CopyRect (scroll detection) and ZRLE rectangles
  auth.py       the VNC-password security type's DES challenge (RFC 6143 7.2.2)
  keys.py       X keysyms and QEMU's extended key event (XT scan codes) -> PS/2 set-2 key events
  server.py     VncServer: listens on 127.0.0.1:port or a UNIX socket, one thread per client, off the vCPUs
  address.py    `--vnc HOST:DISPLAY | unix:PATH` and the display section of a VM definition
See docs/vnc.md.
"""
