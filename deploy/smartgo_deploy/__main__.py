from deploy.smartgo_deploy.synth import main

main()
