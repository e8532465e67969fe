from hetgan.cli import main

raise SystemExit(main())
