/* train.h - `ouroboros train`. */
#ifndef OURO_TRAIN_H
#define OURO_TRAIN_H

int cmd_train(int argc, char **argv);

#endif
