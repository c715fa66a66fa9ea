from shoal.ops.cli import main

main()
