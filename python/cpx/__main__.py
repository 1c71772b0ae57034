from cpx.cli import main

raise SystemExit(main())
