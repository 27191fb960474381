"""Device models shared by both CPU backends (UART, PIC, PIT, RTC, i8042, ACPI PM, I/O APIC, ...)."""
