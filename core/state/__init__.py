"""Machine state: the versioned save file (docs/machine-state.md) and what goes into it.

fields.py declares and checks device state, container.py reads and writes the file, cpu.py is the
backend-neutral vCPU record, machine_state.py collects a whole Board's state and puts it back.
"""
