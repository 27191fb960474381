"""The tabs of one VM's window (app/ui/vm_window.py): graphical console, serial console, details, performance."""
