"""The manager's windows and dialogs; app/ui/vm/ holds the tabs of one VM's window."""
