from ggufkit.cli import main

main()
