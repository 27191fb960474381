"""`python -m core.vmproc`: run one VM process (see core/vmproc/child.py)."""
from core.vmproc.child import main

raise SystemExit(main())
