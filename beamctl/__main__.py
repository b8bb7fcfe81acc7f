from beamctl.cli import main

raise SystemExit(main())
