"""The trigger core: knows no CRM and no HTTP."""
