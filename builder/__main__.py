from mlimg.cli import main

main()
