from .preview import main

raise SystemExit(main())
