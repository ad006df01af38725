from mlimg_runtime.server import main

main()
