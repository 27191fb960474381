"""Boot loaders: Linux bzImage direct boot, Multiboot v1, and the ACPI tables the guest reads."""
