from smolit.cli import main

main()
