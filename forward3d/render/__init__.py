"""forward3d.render"""
