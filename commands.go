package main

func init() {
	commands = []*command{}
}
