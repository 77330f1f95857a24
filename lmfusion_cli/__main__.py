from lmfusion_cli.cli import main

main()
