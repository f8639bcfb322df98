from mailkeep.cli.main import main

raise SystemExit(main())
