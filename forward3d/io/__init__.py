"""forward3d.io"""
