import sys
from reptile_fn.cli import main
sys.argv[0] = "reptile-fn"
sys.exit(main())
