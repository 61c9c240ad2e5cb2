from monitor.startup import main

raise SystemExit(main())
