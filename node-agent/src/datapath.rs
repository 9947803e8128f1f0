pub struct Datapath;
