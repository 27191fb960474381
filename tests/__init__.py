"""Vireo's tests, one package per subsystem (engine, devices, boot, software_cpu, kvm, storage, display, gui, remote,
runner, host, ...), and tests/accel/ for the scenarios both accelerators run, parametrised over `kvm` and
`software` (tests/helpers/accel.py). Being packages, test modules are imported by their dotted path
(tests.kvm.test_kvm_vcpu), so two folders may hold files of the same name, and shared code is imported as
`tests.helpers.*`."""
