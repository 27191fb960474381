"""CPU backends: KVM over /dev/kvm and the unicorn-based software CPU, behind one interface (base.py)."""
