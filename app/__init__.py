"""Vireo's Qt application (PyQt6). Only this package imports Qt.

Laid out by purpose:
  app/ui/         the windows and dialogs: main_window (hosts and their VMs; launch(), the entry point), vm_window
                  and its tabs in app/ui/vm/ (console_tab, serial_tab, details, performance), wizard (New VM),
                  dialogs, actions (the VM actions both windows share), connections and connection_dialog (remote
                  hosts over SSH), run_window (`vireo run --display window`)
  app/widgets/    reusable widgets that know nothing of hosts: the graphical console view, the serial terminal,
                  graphs, the notice banner
  app/tools/      programs that drive the real widgets for the docs (screenshots)
  host_bridge.py  the GUI's side of a Host: every Host call on a worker thread, results as Qt signals
  icons.py        the app's icons

app/ reaches the engine only through the Host API (`core.host`) and the VM definition (`core.config`);
tests/gui/test_app_imports.py holds it to that.
"""
