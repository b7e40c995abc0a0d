from ppllava.train.run import main

main()
