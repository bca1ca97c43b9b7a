"""forward3d.eval"""
