"""Reusable Qt widgets that know nothing of hosts or VMs: the graphical console view and window, the serial
terminal, live graphs and the notice banner."""
